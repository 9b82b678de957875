"""Load-time normalisation: resize to the model's input size and standardise with the article's mean/std.

Shards keep the encoded images; this runs when a sample is loaded, so changing
the input size or statistics never means rewriting the data. The article's values
live in the vision config (`vlstack.models.config`); a pretrained tower brings its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from vlstack.data.collate import image_to_tensor
from vlstack.models.config import IMAGE_MEAN, IMAGE_STD, VisionConfig


@dataclass
class NormalizeConfig:
    image_size: int = 384
    """Square side the image is resized to (the article's 384)."""
    mean: tuple[float, float, float] = IMAGE_MEAN
    """Per-channel mean of [0, 1] pixel values (the article's)."""
    std: tuple[float, float, float] = IMAGE_STD
    """Per-channel standard deviation (the article's)."""


def normalize_image(image: Image.Image, cfg: NormalizeConfig | None = None) -> torch.Tensor:
    """PIL image -> float tensor [3, image_size, image_size], standardised per channel."""
    cfg = cfg or NormalizeConfig()
    return image_to_tensor(image, VisionConfig(image_size=cfg.image_size, image_mean=cfg.mean, image_std=cfg.std))
