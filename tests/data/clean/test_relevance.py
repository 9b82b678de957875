from __future__ import annotations

import json
import sys

import pytest
import torch
from PIL import Image

from vlstack.data.clean import relevance
from vlstack.data.clean.relevance import (
    HFClipScorer,
    ITCScorer,
    OpenClipScorer,
    RelevanceConfig,
    calibrate_threshold,
    check_relevance,
    load_clip_scorer,
)
from vlstack.errors import ConfigError, DataError
from vlstack.models.config import ModelConfig, VisionConfig
from vlstack.synthetic.scenes import shape_scenes


@pytest.fixture(scope="module")
def pairs() -> tuple[list[Image.Image], list[str]]:
    scenes = shape_scenes(5, seed=3, image_size=32)
    return [s.image for s in scenes], [s.caption for s in scenes]


# --- thresholds ----------------------------------------------------------------------------


def test_calibration_lands_mid_gap_when_separable():
    result = calibrate_threshold([0.8, 0.9, 0.7, 0.75], [0.1, 0.3, 0.2])
    assert result.threshold == pytest.approx(0.5)
    assert (result.clean_kept, result.mismatched_dropped) == (1.0, 1.0)


def test_calibration_respects_the_clean_drop_budget():
    clean = [i / 100 for i in range(40, 100)]  # 60 clean scores 0.40 .. 0.99
    mismatched = [i / 100 for i in range(0, 50)]  # overlap on 0.40 .. 0.49
    strict = calibrate_threshold(clean, mismatched, max_clean_drop=0.0)
    assert strict.clean_kept == 1.0 and strict.threshold <= 0.40
    loose = calibrate_threshold(clean, mismatched, max_clean_drop=0.2)
    assert loose.clean_kept >= 0.8 and loose.mismatched_dropped > strict.mismatched_dropped


def test_calibration_needs_both_sides():
    with pytest.raises(DataError):
        calibrate_threshold([0.5], [])


class FixedScorer:
    def __init__(self, scores: list[float]):
        self.scores = scores

    def score(self, images, texts) -> list[float]:
        return self.scores


def test_check_relevance_drops_below_threshold():
    verdicts = check_relevance([None] * 3, ["a", "b", "c"], FixedScorer([0.3, 0.1, float("nan")]))
    assert [v.reason for v in verdicts] == [None, relevance.RELEVANCE, relevance.RELEVANCE]
    assert check_relevance([None], ["a"], FixedScorer([0.3]), RelevanceConfig(min_score=0.5))[0].reason


# --- the vlstack ITC adapter ---------------------------------------------------------------


class ColorModel:
    """An 'ITC model' whose embeddings are the mean RGB of the image and colour words of the text."""

    words = ("red", "green", "blue")
    config = ModelConfig(vision=VisionConfig(image_size=8))

    def encode_image(self, pixels):  # [B, 3, S, S] normalised
        return pixels.mean(dim=(2, 3))

    def image_embedding(self, tokens):
        return tokens

    def encode_text(self, ids, mask):
        return ids.float()

    def text_embedding(self, hidden, mask):
        return hidden[:, :3]


class ColorTokenizer:
    eos_token_id, pad_token_id = 9, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 if w in text else -1 for w in ColorModel.words] + [5] * 40}


def test_itc_scorer_computes_cosines():
    images = [Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    scorer = ITCScorer(ColorModel(), ColorTokenizer(), max_length=8)
    scores = scorer.score(images, ["a red one", "a red one"])  # texts are truncated to fit max_length
    assert scores[0] > 0.5 > scores[1]
    with pytest.raises(DataError, match="one text per image"):
        scorer.score(images, ["a red one"])


def test_itc_scorer_with_a_vlstack_model(nano_model, tokenizer, pairs):
    images, texts = pairs
    scores = ITCScorer(nano_model, tokenizer, batch_size=5).score(images, texts)
    one_by_one = ITCScorer(nano_model, tokenizer, batch_size=1).score(images, texts)
    assert scores == pytest.approx(one_by_one, abs=1e-5)  # padding in a batch does not change a score
    assert all(-1.0 <= s <= 1.0 for s in scores)
    # the same cosine the model's own ITC path gives
    from vlstack.data.collate import image_to_tensor, tokenize_texts

    batch = tokenize_texts(tokenizer, texts, 64)
    pixels = torch.stack([image_to_tensor(im, nano_model.config.vision) for im in images])
    with torch.no_grad():
        out = nano_model(pixels, batch.input_ids, batch.attention_mask, fuse=False)
    assert scores == pytest.approx((out.image_embeds * out.text_embeds).sum(-1).tolist(), abs=1e-5)


# --- CLIP checkpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory, tokenizer):
    """A tiny randomly initialised transformers CLIP, with the session tokenizer and a 32 px processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=32, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("hf_clip")
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_hf_clip_scorer_matches_the_model(hf_clip_dir, pairs):
    images, texts = pairs
    scorer = load_clip_scorer(hf_clip_dir, batch_size=2)
    assert isinstance(scorer, HFClipScorer)
    scores = scorer.score(images, texts)
    batch = scorer.tokenizer(texts, padding=True, return_tensors="pt")
    pixels = scorer.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = scorer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels)
    expected = (out.image_embeds * out.text_embeds).sum(-1)  # CLIP's own normalised embeddings
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory):
    """A tiny randomly initialised open_clip model saved in its local-directory layout."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("open_clip")
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**model_cfg)
    save_file(model.state_dict(), str(path / "open_clip_model.safetensors"))
    return path


def test_open_clip_scorer_matches_the_model(open_clip_dir, pairs):
    images, texts = pairs
    scorer = load_clip_scorer(open_clip_dir, batch_size=2)
    assert isinstance(scorer, OpenClipScorer)
    scores = scorer.score(images, texts)
    with torch.no_grad():
        image_emb = scorer.model.encode_image(torch.stack([scorer.preprocess(im) for im in images]), normalize=True)
        text_emb = scorer.model.encode_text(scorer.tokenizer(texts), normalize=True)
    assert scores == pytest.approx((image_emb * text_emb).sum(-1).tolist(), abs=1e-5)


def test_open_clip_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    with pytest.raises(ConfigError, match=r"vlstack\[clip\]"):
        OpenClipScorer(tmp_path)


def test_load_clip_scorer_rejects_other_directories(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_clip_scorer(tmp_path / "missing")
    with pytest.raises(ConfigError, match="open_clip_config.json"):
        load_clip_scorer(tmp_path)
