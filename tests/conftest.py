"""Shared fixtures: a trained tokenizer and nano models (seeded, built once per test session)."""

from __future__ import annotations

import pytest
import torch

from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import special_token_ids, train_tokenizer
from vlstack.models.vlm import QwenImageModel
from vlstack.synthetic.corpus import synthesize
from vlstack.synthetic.scenes import shape_scenes

# The tests' models are tiny: one intra-op thread runs them as fast as two on an idle machine and many
# times faster on a busy one (spinning threads); multi-process tests start their own processes.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def checkpoint_key(tmp_path_factory):
    """Sign the tests' checkpoints with a key of their own, not the user's (`train/signature.py`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLSTACK_KEY_DIR", str(tmp_path_factory.mktemp("key")))
        yield


@pytest.fixture(scope="session")
def tokenizer():
    captions = [s.caption for s in shape_scenes(200, seed=0)] + [s.caption for s in shape_scenes(100, 0, lang="zh")]
    return train_tokenizer(captions, vocab_size=512)


@pytest.fixture
def nano_config(tokenizer) -> ModelConfig:
    config = ModelConfig.from_preset("nano")
    config.image_token_id = special_token_ids(tokenizer).image
    return config


@pytest.fixture
def nano_model(nano_config) -> QwenImageModel:
    torch.manual_seed(0)
    return QwenImageModel(nano_config).eval()


@pytest.fixture(scope="session")
def pretrain_data(tmp_path_factory):
    """`pretrain_data(train, test)`: the `data.sources=...`, `data.test=...` overrides of a pretraining run on
    synthetic caption shards of that many train and test scenes (each written once per session)."""
    root = tmp_path_factory.mktemp("captions")

    def overrides(train: int = 256, test: int = 64) -> list[str]:
        folders = {}
        for split, n in (("train", train), ("test", test)):
            folders[split] = root / f"{split}-{n}"
            if not folders[split].is_dir():
                synthesize("caption", n, folders[split], split=split)
        return [f"data.sources=[{{path: {folders['train']}}}]", f"data.test={folders['test']}"]

    return overrides


# --- tiny Hugging Face checkpoints, as a user would bring them (written by the tests, never downloaded) --


TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
LM_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _save_tiny_tower(path, kind: str):
    """A random SiglipVisionModel or CLIPVisionModel of 2 layers on 32 px, with its image processor."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    torch.manual_seed(0)
    if kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**TINY_TOWER))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**TINY_TOWER))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)


def _save_tiny_language_model(path, model_type: str):
    """A random Qwen2 / Qwen3 causal LM with a byte-level BPE tokenizer of its own: Qwen's special tokens
    (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`) and chat template, none of vlstack's additions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    texts = [s.caption for s in shape_scenes(200, seed=1)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = LM_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=128, vocab_size=len(tokenizer),
                                  max_position_embeddings=256, tie_word_embeddings=True, head_dim=16,
                                  initializer_range=0.2)  # wide enough that the answer depends on the input
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _written_once(root, write):
    """`path(name)`: `root / name`, written by `write(path, name)` the first time it is asked for."""
    def path(name: str):
        if not (root / name).is_dir():
            write(root / name, name)
        return root / name

    return path


@pytest.fixture(scope="session")
def tiny_tower(tmp_path_factory):
    """`tiny_tower("siglip" | "clip")`: the directory of a random 2-layer tower on 32 px with its image
    processor (written once per session; tests copy it before changing it)."""
    path = _written_once(tmp_path_factory.mktemp("towers"), _save_tiny_tower)
    return lambda kind="siglip": path(kind)


@pytest.fixture(scope="session")
def tiny_language_model(tmp_path_factory):
    """`tiny_language_model("qwen2" | "qwen3")`: the directory of a random 2-layer causal LM with a byte-level
    BPE tokenizer of its own: Qwen's special tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`) and chat
    template, none of vlstack's additions."""
    path = _written_once(tmp_path_factory.mktemp("language-models"), _save_tiny_language_model)
    return lambda model_type="qwen2": path(model_type)


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory):
    """The directory of a random open_clip CLIP (2-layer ViT on 32 px) as open_clip's hub folders hold one:
    open_clip_config.json (model_cfg, preprocess_cfg) and open_clip_model.safetensors."""
    open_clip = pytest.importorskip("open_clip")
    import json

    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("open-clip")
    model_cfg = {"embed_dim": 16, "quick_gelu": True,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8,
                                "mlp_ratio": 2.0},
                 "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    preprocess_cfg = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic",
                      "resize_mode": "shortest", "size": 32}
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "open_clip_model.safetensors")
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
    return path
