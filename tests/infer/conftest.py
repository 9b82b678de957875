"""Fixtures shared by the inference tests."""

from __future__ import annotations

import pytest
import torch

from vlstack.checkpoint import save_model
from vlstack.infer.engine import Engine, EngineConfig
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import special_token_ids
from vlstack.models.vlm import QwenImageModel


def sharpen(model: QwenImageModel) -> QwenImageModel:
    """Larger LM weights than the random init: a random nano LM repeats one token, a sharpened one's greedy
    outputs depend on the input."""
    with torch.no_grad():
        for param in model.language_model.parameters():
            if param.ndim == 2:
                param.normal_(0, 0.5)
    return model


@pytest.fixture
def engine(nano_model, tokenizer):
    """An Engine over the sharpened nano model, fast path off (test_server and test_page use a plain one)."""
    return Engine(sharpen(nano_model), tokenizer, EngineConfig(fast_path_max_new_tokens=0))


@pytest.fixture(scope="session")
def sharpened_checkpoint(tmp_path_factory, tokenizer):
    """A nano fp32 checkpoint whose LM weights are sharpened, so that greedy outputs depend on the input."""
    config = ModelConfig.from_preset("nano")
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(0)
    model = sharpen(QwenImageModel(config))
    directory = tmp_path_factory.mktemp("sharpened") / "fp32"
    save_model(model, directory, tokenizer)
    return directory
