"""Alignment fixtures: nano checkpoints built once per session (an untrained one, and one after a short SFT)."""

from __future__ import annotations

import pytest
import torch

from vlstack.align.logprobs import load_engine
from vlstack.align.preference import PreferenceDataConfig, alignment_items
from vlstack.align.rollouts import RolloutConfig, sampled_reward
from vlstack.checkpoint import load_model, save_model
from vlstack.data.collate import CollateConfig, SampleCollator
from vlstack.data.conversations import encode_conversations
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import load_tokenizer, special_token_ids, train_tokenizer
from vlstack.models.vlm import QwenImageModel
from vlstack.synthetic.preferences import vqa_samples, write_preferences
from vlstack.train.objectives import sft_objective
from vlstack.train.trainer import TrainConfig, Trainer

COLOR = ["color"]
"""The RL and reward tests ask colour questions: the one kind a nano model learns to see in a few
hundred steps (6 answers: chance 1/6)."""


@pytest.fixture(scope="session")
def alignment_data(tmp_path_factory):
    """`alignment_data(train_items, eval_items, question_types=None, rejected="wrong")`: a PreferenceDataConfig
    over synthetic shapes_vqa pairs written as shards (train and test split; each set written once)."""
    root = tmp_path_factory.mktemp("preferences")

    def config(train_items: int, eval_items: int, question_types=None, rejected: str = "wrong"):
        types = question_types or ["color", "shape", "count", "count_color", "position"]
        name = f"{'-'.join(types)}-{rejected}"
        paths = {}
        for split, n in (("train", train_items), ("test", eval_items)):
            paths[split] = root / f"{name}-{split}-{n}"
            if not paths[split].is_dir():
                write_preferences(paths[split], n, split, types, rejected)
        return PreferenceDataConfig(train=str(paths["train"]), held_out=str(paths["test"]))

    return config


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory):
    """An untrained nano model with a tokenizer trained on the VQA conversations."""
    texts = [turn["value"] for s in vqa_samples(400, "train") for turn in s.conversations]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    config = ModelConfig.from_preset("nano")
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("align") / "nano"
    save_model(QwenImageModel(config), directory, tokenizer)
    return directory


@pytest.fixture(scope="session")
def sft_checkpoint(nano_checkpoint, tmp_path_factory):
    """The nano model after 400 SFT steps on colour questions (the fine-tuning stages' `sft_objective`):
    it answers with a colour, right about 70% of the time on held-out scenes."""
    model = load_model(nano_checkpoint)
    tokenizer = load_tokenizer(nano_checkpoint / "tokenizer")
    collator = SampleCollator(tokenizer, CollateConfig(num_image_tokens=model.num_image_tokens(), max_length=128,
                                                       vision=model.config.vision))
    data, _ = encode_conversations(vqa_samples(2000, "train", COLOR), collator)
    train = TrainConfig(steps=400, batch_size=32, lr=1e-3, warmup_steps=10, precision="fp32", measure_mfu=False,
                        tensorboard=False)
    Trainer(model, sft_objective, train, data).fit("SFT warm-up")
    directory = tmp_path_factory.mktemp("align") / "sft"
    save_model(model, directory, tokenizer)
    return directory


@pytest.fixture
def reward_before_after():
    """`(start, trained, data) -> (before, after)`: the mean exact-answer reward of each checkpoint on the
    first 4 training prompts of `data`, over 64 fresh samples per prompt (how the RL tests judge a run)."""

    def measure(start, trained, data: PreferenceDataConfig) -> tuple[float, float]:
        prompts, rollout = alignment_items(data, "train")[:4], RolloutConfig(max_new_tokens=4)
        return tuple(sampled_reward(load_engine(str(checkpoint)), prompts, rollout, per_prompt=64)
                     for checkpoint in (start, trained))

    return measure
