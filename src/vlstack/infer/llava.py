"""The LLaVA format of `transformers`: export a vlstack checkpoint, import one back.

`export_llava` writes a `LlavaForConditionalGeneration` directory (config.json, safetensors, a
`LlavaProcessor` with the tokenizer, its chat template and an image processor that reproduces
vlstack's preprocessing, generation_config.json with vlstack's stop tokens) that `transformers`,
vLLM (`vllm serve OUT`) and lmms-eval load as they load any LLaVA model. Only the generation path has
a counterpart there: the vision tower (a plain SigLIP- or CLIP-shaped ViT, `state_dict_adapter`), the
projector and the LM; the fusion encoder and the pretraining heads stay behind. The visual tokens are
the tower's whole output (`vision_feature_select_strategy="full"`, last layer), as vlstack's are.

`import_llava` is the way back: the generation path from the directory, and a fusion encoder with
fresh heads (LLaVA has none) so that the result pretrains, fine-tunes and serves like any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlstack.checkpoint import atomic_directory, load_checkpoint_tokenizer, load_model, quantization_of, save_model
from vlstack.errors import CheckpointError, ConfigError
from vlstack.files import write_json
from vlstack.models.config import FusionConfig, ModelConfig, VisionConfig
from vlstack.models.language import decoder, language_config_from_hf
from vlstack.models.state_dict_adapter import (
    Kind,
    kind_of,
    load_hf_tower_weights,
    shaped_like,
    tower_to_hf,
    with_preprocessing,
)
from vlstack.models.tokenizer import IM_END, IMAGE, load_tokenizer
from vlstack.models.vlm import QwenImageModel

EXPORT_JSON = "vlstack_export.json"
"""Written beside the export: where it came from and what was left behind."""
PROJECTOR = {f"{ours}.{p}": f"{theirs}.{p}" for ours, theirs in (("fc1", "linear_1"), ("fc2", "linear_2"))
             for p in ("weight", "bias")}
"""vlstack's projector (`layers.MLP`) -> `LlavaMultiModalProjector`: the same two layers under other names."""


def export_llava(checkpoint_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write the checkpoint as a LLaVA directory; a model with a part LLaVA lacks is a ConfigError that
    names every such field."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    checkpoint_dir = Path(checkpoint_dir)
    if quantization_of(checkpoint_dir) is not None:
        raise CheckpointError(f"{checkpoint_dir} is an int8 checkpoint; export the fp32 checkpoint it came from")
    model = load_model(checkpoint_dir)
    tokenizer = load_checkpoint_tokenizer(checkpoint_dir)
    if model.patch_position is not None:
        raise ConfigError(f"{checkpoint_dir / 'config.yaml'}: patch_positions = true (a position table added to "
                          "the projected patch tokens) has no LLaVA counterpart; train with patch_positions: false")
    kind, vision_config, vision_state = tower_to_hf(model.vision)
    text_config = model.language_model.config
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config.to_dict(), image_token_index=model.config.image_token_id,
        image_seq_length=model.num_image_tokens(), projector_hidden_act=model.projector.activation,
        vision_feature_select_strategy="full", vision_feature_layer=-1, multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )
    llava = LlavaForConditionalGeneration(config).eval()
    llava.model.vision_tower.load_state_dict(vision_state)
    projector = model.projector.state_dict()
    llava.model.multi_modal_projector.load_state_dict({theirs: projector[ours] for ours, theirs in PROJECTOR.items()})
    llava.model.language_model.load_state_dict(decoder(model.language_model).state_dict())
    llava.lm_head.load_state_dict(model.language_model.get_output_embeddings().state_dict())
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    llava.generation_config.eos_token_id = sorted(set(stops))
    llava.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_directory(out_dir) as tmp:
        llava.save_pretrained(tmp)
        _processor(model, tokenizer).save_pretrained(tmp)
        report = {"source": str(checkpoint_dir), "architecture": "LlavaForConditionalGeneration",
                  "vision_tower": f"{kind}_vision_model", "language_model": text_config.model_type,
                  "image_tokens": model.num_image_tokens(),
                  "left_behind": "the fusion encoder and the ITC / ITM / MLM / VTM heads (pretraining only)"}
        write_json(tmp / EXPORT_JSON, report)
    return report


def _processor(model: QwenImageModel, tokenizer):
    """A LlavaProcessor whose image processor does what `vlstack.data.collate.image_to_tensor` does."""
    from PIL.Image import Resampling
    from transformers import CLIPImageProcessor, LlavaProcessor, SiglipImageProcessor

    vision = model.config.vision
    resample = {"bilinear": Resampling.BILINEAR, "bicubic": Resampling.BICUBIC}[vision.resample]
    common = dict(image_mean=list(vision.image_mean), image_std=list(vision.image_std), resample=resample)
    if vision.crop:
        images = CLIPImageProcessor(size={"shortest_edge": vision.image_size},
                                    crop_size={"height": vision.image_size, "width": vision.image_size}, **common)
    else:
        images = SiglipImageProcessor(size={"height": vision.image_size, "width": vision.image_size}, **common)
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=vision.patch_size,
                          vision_feature_select_strategy="full", chat_template=tokenizer.chat_template,
                          image_token=IMAGE, num_additional_image_tokens=vision.num_prompts)


def import_llava(llava_dir: str | Path, out_dir: str | Path) -> Path:
    """A vlstack checkpoint from a LLaVA directory whose tower is SigLIP or CLIP and whose visual tokens are
    the tower's last layer, whole; anything else is a ConfigError naming the field of config.json."""
    from transformers import LlavaForConditionalGeneration

    llava_dir = Path(llava_dir)
    config_file = llava_dir / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{llava_dir} has no config.json; point it at a LlavaForConditionalGeneration folder")
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    if raw.get("model_type") != "llava":
        raise ConfigError(f"{config_file}: model_type {raw.get('model_type')!r} is not 'llava'")
    for key, wanted in (("vision_feature_layer", -1), ("vision_feature_select_strategy", "full")):
        if raw.get(key) != wanted:
            raise ConfigError(f"{config_file}: {key} = {raw.get(key)!r}; vlstack's towers feed the projector their "
                              f"last layer's tokens, all of them ({key} = {wanted!r})")
    try:
        llava = LlavaForConditionalGeneration.from_pretrained(llava_dir, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the LLaVA model from {llava_dir}: {exc}") from exc
    kind = kind_of(llava.config.vision_config.model_type, f"{config_file}: vision_config.model_type")
    model = QwenImageModel(_model_config(llava, kind, llava_dir))
    load_hf_tower_weights(model.vision, llava.model.vision_tower.state_dict(), kind)
    projector = llava.model.multi_modal_projector.state_dict()
    model.projector.load_state_dict({ours: projector[theirs] for ours, theirs in PROJECTOR.items()})
    decoder(model.language_model).load_state_dict(llava.model.language_model.state_dict())
    model.language_model.get_output_embeddings().load_state_dict(llava.lm_head.state_dict())
    return save_model(model, out_dir, load_tokenizer(llava_dir))


def _model_config(llava, kind: Kind, llava_dir: Path) -> ModelConfig:
    """The generation path's shape from the LLaVA config; a fusion encoder as wide as the LM."""
    language = language_config_from_hf(llava.config.text_config)
    plain = VisionConfig(global_every=1, num_prompts=0)
    vision = shaped_like(plain, llava.config.vision_config.to_dict(), kind, llava_dir / "config.json")
    return ModelConfig(name="llava-import", vision=with_preprocessing(vision, llava_dir, kind), language=language,
                       fusion=FusionConfig(width=language.hidden_size, layers=2, heads=language.heads),
                       patch_positions=False, image_token_id=llava.config.image_token_id)


__all__ = ["export_llava", "import_llava"]
