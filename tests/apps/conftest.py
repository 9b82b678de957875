"""A nano checkpoint and its Engine for the apps' tests (random weights: the apps' plumbing, not answers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlstack.checkpoint import save_model
from vlstack.infer.engine import Engine
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import special_token_ids
from vlstack.models.vlm import QwenImageModel


@pytest.fixture(scope="package")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    config = ModelConfig.from_preset("nano")
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("medical") / "nano"
    save_model(QwenImageModel(config), path, tokenizer=tokenizer)
    return path


@pytest.fixture(scope="package")
def engine(checkpoint) -> Engine:
    return Engine.from_checkpoint(checkpoint)
