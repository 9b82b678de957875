from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlstack.data.clean.normalize import NormalizeConfig, normalize_image
from vlstack.data.collate import image_to_tensor
from vlstack.models.config import IMAGE_MEAN, IMAGE_STD, VisionConfig


def test_seed_defaults():
    cfg = NormalizeConfig()
    assert cfg.image_size == 384
    assert cfg.mean == (0.481, 0.457, 0.408) == IMAGE_MEAN
    assert cfg.std == (0.268, 0.261, 0.275) == IMAGE_STD


def test_resizes_and_standardises(astronaut):
    tensor = normalize_image(astronaut)
    assert tensor.shape == (3, 384, 384) and tensor.dtype == torch.float32
    # the collator's path, not a copy of it
    assert torch.equal(tensor, image_to_tensor(astronaut, VisionConfig(image_size=384)))


def test_mean_colour_maps_to_zero_and_custom_stats_apply():
    mean_colour = tuple(round(m * 255) for m in IMAGE_MEAN)
    tensor = normalize_image(Image.new("RGB", (50, 30), mean_colour), NormalizeConfig(image_size=16))
    assert tensor.shape == (3, 16, 16) and tensor.abs().max() < 0.01
    plain = normalize_image(Image.new("RGB", (8, 8), (255, 0, 255)), NormalizeConfig(16, (0, 0, 0), (1, 1, 1)))
    assert plain[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 1.0])
