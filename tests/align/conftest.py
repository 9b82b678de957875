"""Alignment fixtures: nano checkpoints built once per session (an untrained one, and one after a short SFT)."""

from __future__ import annotations

import pytest
import torch

from vlstack.align.logprobs import load_engine
from vlstack.align.ppo import RolloutConfig, sampled_reward
from vlstack.align.preference import VQADataConfig, vqa_samples
from vlstack.data.collate import CollateConfig, SampleCollator
from vlstack.data.conversations import encode_conversations
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import load_tokenizer, special_token_ids, train_tokenizer
from vlstack.models.vlm import QwenImageModel
from vlstack.train.objectives import sft_objective
from vlstack.train.trainer import TrainConfig, Trainer

COLOR = VQADataConfig(question_types=["color"], train_items=256, eval_items=64)
"""The RL and reward tests ask colour questions: the one kind a nano model learns to see in a few
hundred steps (6 answers: chance 1/6)."""


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory):
    """An untrained nano model with a tokenizer trained on the VQA conversations."""
    texts = [turn["value"] for s in vqa_samples(400, VQADataConfig(), "train") for turn in s.conversations]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    config = ModelConfig.from_preset("nano")
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("align") / "nano"
    QwenImageModel(config).save_pretrained(directory, tokenizer)
    return directory


@pytest.fixture(scope="session")
def sft_checkpoint(nano_checkpoint, tmp_path_factory):
    """The nano model after 400 SFT steps on colour questions (the fine-tuning stages' `sft_objective`):
    it answers with a colour, right about 70% of the time on held-out scenes."""
    model = QwenImageModel.from_pretrained(nano_checkpoint)
    tokenizer = load_tokenizer(nano_checkpoint / "tokenizer")
    collator = SampleCollator(tokenizer, CollateConfig(num_image_tokens=model.num_image_tokens(), max_length=128,
                                                       image_size=model.config.vision.image_size))
    data, _ = encode_conversations(vqa_samples(2000, COLOR, "train"), collator)
    train = TrainConfig(steps=400, batch_size=32, lr=1e-3, warmup_steps=10, precision="fp32", measure_mfu=False,
                        tensorboard=False)
    Trainer(model, sft_objective, train, data).fit("SFT warm-up")
    directory = tmp_path_factory.mktemp("align") / "sft"
    model.save_pretrained(directory, tokenizer)
    return directory


@pytest.fixture
def reward_before_after():
    """`(start, trained, data) -> (before, after)`: the mean exact-answer reward of each checkpoint on the
    first 4 training prompts of `data`, over 64 fresh samples per prompt (how the RL tests judge a run)."""

    def measure(start, trained, data: VQADataConfig) -> tuple[float, float]:
        prompts, rollout = vqa_samples(4, data, "train"), RolloutConfig(max_new_tokens=4)
        return tuple(sampled_reward(load_engine(str(checkpoint)), prompts, rollout, per_prompt=64)
                     for checkpoint in (start, trained))

    return measure
