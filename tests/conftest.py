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
