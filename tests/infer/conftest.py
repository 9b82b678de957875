"""Fixtures shared by the inference tests."""

from __future__ import annotations

import pytest
import torch

from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import special_token_ids
from vlstack.models.vlm import QwenImageModel


@pytest.fixture(scope="session")
def sharpened_checkpoint(tmp_path_factory, tokenizer):
    """A nano fp32 checkpoint whose LM weights are sharpened, so that greedy outputs depend on the input."""
    config = ModelConfig.from_preset("nano")
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(0)
    model = QwenImageModel(config)
    with torch.no_grad():
        for param in model.language_model.parameters():
            if param.ndim == 2:
                param.normal_(0, 0.5)
    directory = tmp_path_factory.mktemp("sharpened") / "fp32"
    model.save_pretrained(directory, tokenizer)
    return directory
