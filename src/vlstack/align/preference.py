"""Alignment data: prompts with a reference answer (RL's verifiable reward) and preference pairs (DPO, the
reward model), read from instruction datasets.

A dataset is a shard directory (`vlstack data synth-instructions` writes one) or a LLaVA / OpenAI
JSON file: conversations whose last (assistant) turn is the reference answer, the chosen one of a pair.
The rejected answer of a pair is `meta["rejected"]` (a LLaVA record's top-level `rejected`). A sampled
answer is judged by rule (`answer_reward`: exact match); train and held-out items come from different
datasets.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from vlstack.align.logprobs import Batch, encode_responses, response_ids
from vlstack.data.collate import sample_messages
from vlstack.data.conversations import load_conversations
from vlstack.data.schema import Sample
from vlstack.errors import ConfigError, DataError
from vlstack.eval.conversations import evaluate_samples, normalize_answer
from vlstack.infer.engine import Engine, Request, SamplingParams

REJECTED = "rejected"
"""`meta` key: the rejected answer of a preference pair."""


@dataclass
class PreferenceDataConfig:
    """Which alignment items a run trains and evaluates on."""

    train: str | None = None
    """Training items: a shard directory or a LLaVA / OpenAI JSON(L) file of conversations."""
    held_out: str | None = None
    """Held-out items, for accuracy (and implicit-reward accuracy) before and after."""
    image_root: str | None = None
    """The folder a JSON file's image paths are relative to (default: the file's own folder)."""
    train_items: int | None = None
    """Use the first `train_items` training items (None: all)."""
    eval_items: int | None = None
    """Use the first `eval_items` held-out items (None: all)."""

    def __post_init__(self) -> None:
        if any(n is not None and n < 1 for n in (self.train_items, self.eval_items)):
            raise ConfigError("data.train_items and data.eval_items must be at least 1 (or null for all)")


def alignment_items(config: PreferenceDataConfig, split: Literal["train", "held_out"]) -> list[Sample]:
    """The items of `split` (`config.train` or `config.held_out`), at most `train_items` / `eval_items`."""
    path = config.train if split == "train" else config.held_out
    if not path:
        raise ConfigError(f"data.{split} is not set: point it at a shard directory or a LLaVA / OpenAI JSON file of "
                          "conversations (`vlstack data synth-instructions --dataset shapes_vqa --rejected wrong` "
                          "writes a synthetic one)")
    limit = config.train_items if split == "train" else config.eval_items
    return load_conversations(path, config.image_root or Path(path).parent)[:limit]


@dataclass
class PreferencePair:
    sample: Sample
    """The prompt (every turn but the last) and its image."""
    chosen: str
    rejected: str


def answer_of(sample: Sample) -> str:
    """The reference answer: the last (assistant) turn."""
    return sample.conversations[-1]["value"]


def preference_pairs(samples: list[Sample]) -> list[PreferencePair]:
    """The reference answer chosen, `meta["rejected"]` rejected; an item without one is a DataError."""
    missing = [s.id for s in samples if not isinstance(s.meta.get(REJECTED), str)]
    if missing:
        raise DataError(f"{len(missing)} of {len(samples)} items have no rejected answer (meta.{REJECTED}), e.g. "
                        f"{missing[:3]}; preference pairs need one")
    return [PreferencePair(s, answer_of(s), s.meta[REJECTED]) for s in samples]


def prompt_request(sample: Sample, **params) -> Request:
    """The sample's conversation up to its answer, as an Engine request (`params`: `SamplingParams` fields)."""
    images = [Image.open(io.BytesIO(ref.data)).convert("RGB") for ref in sample.images]
    return Request(sample_messages(sample)[:-1], images, SamplingParams(**params))


def answer_reward(response: str, answer: str) -> float:
    """The verifiable reward: 1 when the response is the answer (compared as the held-out evaluation compares
    them: case, outer spaces and a final full stop aside), else 0."""
    return float(normalize_answer(response) == normalize_answer(answer))


def answer_accuracy(engine: Engine, samples: list[Sample], max_new_tokens: int = 8) -> float:
    """Held-out accuracy with greedy decoding through the Engine (the fine-tuning stages' evaluation)."""
    return evaluate_samples(engine, samples, max_new_tokens, description="held-out accuracy")["accuracy"]


def preference_data(engine: Engine, config: PreferenceDataConfig, split: Literal["train", "held_out"]) -> Batch:
    """The encoded pairs of `split`."""
    return encode_pairs(engine, preference_pairs(alignment_items(config, split)))


def encode_pairs(engine: Engine, pairs: list[PreferencePair]) -> Batch:
    """Pairs -> a dataset of equal-length rows: `pixel_values` [N, 3, S, S] and `input_ids`,
    `attention_mask`, `response_mask` [N, 2, T] (index 0 the chosen response, 1 the rejected)."""
    n = len(pairs)
    requests = [prompt_request(p.sample) for p in pairs]
    responses = [response_ids(engine, p.chosen) for p in pairs] + [response_ids(engine, p.rejected) for p in pairs]
    rows = encode_responses(engine, requests * 2, responses)  # 2N rows: the chosen ones, then the rejected ones
    paired = {k: v.view(2, n, -1).transpose(0, 1).contiguous() for k, v in rows.items() if k != "pixel_values"}
    return {"pixel_values": rows["pixel_values"][:n], **paired}


def flatten_pairs(batch: Batch) -> Batch:
    """A batch of pairs ([B, 2, T] rows) -> 2B scoring rows: the B chosen, then the B rejected."""
    flat = {k: v.transpose(0, 1).reshape(-1, v.shape[-1]) for k, v in batch.items() if v.ndim == 3}
    return {**flat, "pixel_values": batch["pixel_values"].repeat(2, 1, 1, 1)}  # [2B, 3, S, S]
