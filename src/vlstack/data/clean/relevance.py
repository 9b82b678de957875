"""Image–text relevance: drop pairs whose caption does not describe the image.

A scorer is any object with `score(images, texts) -> list[float]` (pair i is
images[i] with texts[i]). Three adapters ship, all cosine similarities of
L2-normalised embeddings:
- `HFClipScorer`: a `transformers` CLIP checkpoint directory;
- `OpenClipScorer`: an open_clip checkpoint directory (`open_clip_config.json` + weights);
- `ITCScorer`: any model with ITC embedding methods, such as a vlstack checkpoint
  (the bootstrap route: train a small scorer on a trusted subset, filter the rest).

The article's threshold 0.22 is a cosine of OpenAI CLIP ViT-B embeddings. Other
scorers have other scales (a small ITC head may put matching pairs at 0.9 and
mismatched ones at 0.3), so calibrate with `calibrate_threshold` on clean and
deliberately mismatched pairs, and report the threshold used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlstack.data.clean.verdict import Verdict
from vlstack.data.collate import image_to_tensor, tokenize_texts
from vlstack.errors import ConfigError, DataError

RELEVANCE = "relevance"


class RelevanceScorer(Protocol):
    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """Relevance of each (images[i], texts[i]) pair; higher = more relevant."""
        ...


@dataclass
class RelevanceConfig:
    min_score: float = 0.22
    """Drop pairs scoring below this. The article's 0.22 is an OpenAI CLIP cosine: for any other
    scorer, set the value `calibrate_threshold` finds (see the module doc)."""


def check_relevance(
    images: Sequence[Image.Image], texts: Sequence[str], scorer: RelevanceScorer, cfg: RelevanceConfig | None = None
) -> list[Verdict]:
    cfg = cfg or RelevanceConfig()
    return [
        Verdict(score=s, reason=RELEVANCE if not s >= cfg.min_score else None)  # NaN drops too
        for s in scorer.score(images, texts)
    ]


@dataclass(frozen=True)
class Calibration:
    threshold: float
    """Keep pairs scoring at or above this."""
    clean_kept: float
    """Fraction of the clean pairs the threshold keeps."""
    mismatched_dropped: float
    """Fraction of the mismatched pairs it drops."""


def calibrate_threshold(
    scores_clean: Sequence[float], scores_mismatched: Sequence[float], max_clean_drop: float = 0.05
) -> Calibration:
    """The threshold that best separates clean from mismatched pairs for this scorer.

    Maximises (mismatched dropped - clean dropped) (Youden's J) among thresholds
    that drop at most `max_clean_drop` of the clean pairs; candidates lie halfway
    between neighbouring observed scores, so a perfect separation lands mid-gap.
    """
    clean = np.sort(np.asarray(scores_clean, dtype=np.float64))
    mismatched = np.asarray(scores_mismatched, dtype=np.float64)
    if clean.size == 0 or mismatched.size == 0:
        raise DataError("calibrate_threshold needs at least one clean and one mismatched score")
    values = np.unique(np.concatenate([clean, mismatched]))
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    clean_dropped = np.searchsorted(clean, candidates, side="left") / clean.size  # fraction < t
    mismatched_dropped = (mismatched[None, :] < candidates[:, None]).mean(axis=1)
    gain = np.where(clean_dropped <= max_clean_drop, mismatched_dropped - clean_dropped, -np.inf)
    best = int(np.argmax(gain))
    return Calibration(float(candidates[best]), float(1 - clean_dropped[best]), float(mismatched_dropped[best]))


def calibrate_scorer(scorer: RelevanceScorer, images: Sequence[Image.Image], texts: Sequence[str],
                     max_clean_drop: float = 0.05) -> Calibration:
    """Calibrate `scorer` on trusted pairs: each image with its own text (clean) and with the
    next image's text (mismatched), so no hand-labelled negatives are needed."""
    if len(images) < 2 or len(images) != len(texts):
        raise DataError(f"calibration needs at least two trusted pairs, one text per image; got {len(images)} "
                        f"images and {len(texts)} texts")
    rolled = list(texts[1:]) + list(texts[:1])
    return calibrate_threshold(scorer.score(images, texts), scorer.score(images, rolled), max_clean_drop)


class EmbeddingScorer(ABC):
    """Cosine of L2-normalised image and text embeddings, computed in batches without gradients."""

    batch_size: int = 32

    @abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, E] image embeddings."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[B, E] text embeddings."""

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        if len(images) != len(texts):
            raise DataError(f"relevance needs one text per image; got {len(images)} images and {len(texts)} texts")
        scores: list[float] = []
        for begin in range(0, len(images), self.batch_size):
            end = begin + self.batch_size
            image_emb = F.normalize(self.embed_images(images[begin:end]).float(), dim=-1)  # [B, E]
            text_emb = F.normalize(self.embed_texts(texts[begin:end]).float(), dim=-1)  # [B, E]
            scores.extend((image_emb * text_emb).sum(dim=-1).tolist())
        return scores


class HFClipScorer(EmbeddingScorer):
    """A `transformers` CLIP checkpoint directory (config.json, weights, tokenizer, image processor)."""

    def __init__(self, path: str | Path, batch_size: int = 32, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        path = _existing_dir(path)
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.batch_size, self.device = batch_size, device

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return _features(self.model.get_image_features(pixel_values=pixels.to(self.device)))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return _features(
            self.model.get_text_features(
                input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
            )
        )


class OpenClipScorer(EmbeddingScorer):
    """An open_clip checkpoint directory (`open_clip_config.json` + weights); needs the `clip` extra."""

    def __init__(self, path: str | Path, batch_size: int = 32, device: str = "cpu"):
        try:
            import open_clip
        except ImportError as exc:
            raise ConfigError(
                "scoring with an open_clip checkpoint needs open_clip: pip install 'vlstack[clip]' "
                "(or pip install 'open_clip_torch>=3.0')"
            ) from exc
        name = f"local-dir:{_existing_dir(path)}"
        self.model, self.preprocess = open_clip.create_model_from_pretrained(name, device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.batch_size, self.device = batch_size, device

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images])  # [B, 3, H, W]
        return self.model.encode_image(pixels.to(self.device))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))


class ITCScorer(EmbeddingScorer):
    """A vlstack `QwenImageModel` (or any model with its ITC methods and `config.vision`):
    `image_embedding(encode_image(pixels))` and `text_embedding(encode_text(ids, mask), mask)`.
    Texts longer than `max_length` tokens are scored on their first tokens."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 64, batch_size: int = 32, device: str = "cpu"):
        self.model, self.tokenizer = model, tokenizer
        self.max_length = max_length
        self.batch_size, self.device = batch_size, device

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        vision = self.model.config.vision
        pixels = torch.stack([image_to_tensor(im, vision) for im in images]).to(self.device)  # [B, 3, S, S]
        return self.model.image_embedding(self.model.encode_image(pixels))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        batch = tokenize_texts(self.tokenizer, texts, self.max_length, truncate=True)
        ids, mask = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
        return self.model.text_embedding(self.model.encode_text(ids, mask), mask)


def load_clip_scorer(path: str | Path, batch_size: int = 32, device: str = "cpu") -> EmbeddingScorer:
    """The right CLIP adapter for a local checkpoint directory, told apart by its files."""
    directory = _existing_dir(path)
    if (directory / "open_clip_config.json").is_file():
        return OpenClipScorer(directory, batch_size, device)
    if (directory / "config.json").is_file():
        return HFClipScorer(directory, batch_size, device)
    raise ConfigError(
        f"{directory} holds neither open_clip_config.json (open_clip) nor config.json (transformers CLIP); "
        "point the relevance scorer at a CLIP checkpoint directory"
    )


def _existing_dir(path: str | Path) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"relevance model directory {str(path)!r} does not exist")
    return directory


def _features(output: Any) -> torch.Tensor:
    """transformers < 5 returns the projected features; 5.x wraps them in `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
