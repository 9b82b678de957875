"""Synthetic VQA with checkable answers: prompts for RL, preference pairs for DPO and the reward model.

The items are the `shapes_vqa` instruction conversations (`vlstack.synthetic.instructions`, the data the SFT
stages train on, drawn apart from the evaluation suites' scenes): one question on a shape scene (colour,
shape, count, count of a colour, position) whose answer the scene fixes exactly. So a sampled answer is
judged by rule (`answer_reward`), and a wrong answer of the same kind is a rejected response that only
the image tells apart from the chosen one. Train and held-out items come from different splits.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from vlstack.eval.conversations import evaluate_samples, normalize_answer
from vlstack.align.logprobs import Batch, encode_responses, response_ids
from vlstack.data.collate import sample_messages
from vlstack.synthetic.instructions import instruction_samples
from vlstack.data.schema import Sample
from vlstack.synthetic.scenes import COLORS, PLACES_EN, SHAPES
from vlstack.errors import ConfigError
from vlstack.infer.engine import Engine, Request, SamplingParams

DATASET = "shapes_vqa"
CANDIDATES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "count": ("1", "2"),  # a scene holds one or two shapes
    "count_color": ("0", "1", "2"),
    "position": tuple(PLACES_EN),
}
"""Every answer each question type can have; a rejected answer is one of these, never the true one."""
QUESTION_TYPES = tuple(CANDIDATES)


@dataclass
class VQADataConfig:
    """Which synthetic VQA items alignment trains and evaluates on."""

    train_items: int = 512
    """Items of the `train` split (prompts for RL, pairs for DPO and the reward model)."""
    eval_items: int = 64
    """Held-out items of the `test` split, for accuracy before and after."""
    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))
    """A subset of: color, shape, count, count_color, position."""
    rejected: Literal["wrong", "absent"] = "wrong"
    """The rejected answer of a pair: `wrong`, any other answer of the question's kind; `absent`, for colour
    and shape questions one that no object in the scene has (a hallucination), else as `wrong`."""
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.question_types) - set(QUESTION_TYPES))
        if unknown or not self.question_types:
            raise ConfigError(f"data.question_types {self.question_types!r} must be a non-empty subset of "
                              f"{', '.join(QUESTION_TYPES)}")
        if self.train_items < 1 or self.eval_items < 1:
            raise ConfigError("data.train_items and data.eval_items must be at least 1")


@dataclass
class PreferencePair:
    sample: Sample
    """The prompt (every turn but the last) and its image."""
    chosen: str
    rejected: str


def vqa_samples(n: int, config: VQADataConfig, split: str) -> list[Sample]:
    """The first `n` `shapes_vqa` conversations of `split` whose question type is in `config.question_types`."""
    drawn = n
    while True:
        samples = [s for s in instruction_samples(DATASET, drawn, config.seed, split)
                   if s.meta["question_type"] in config.question_types]
        if len(samples) >= n:
            return samples[:n]
        drawn *= 2


def answer_of(sample: Sample) -> str:
    """The reference answer: the last (assistant) turn."""
    return sample.conversations[-1]["value"]


def prompt_request(sample: Sample, **params) -> Request:
    """The sample's conversation up to its answer, as an Engine request (`params`: `SamplingParams` fields)."""
    images = [Image.open(io.BytesIO(ref.data)).convert("RGB") for ref in sample.images]
    return Request(sample_messages(sample)[:-1], images, SamplingParams(**params))


def wrong_answer(sample: Sample, rng: random.Random, absent: bool = False) -> str:
    """An answer of the sample's own question type that its scene makes false; with `absent`, a colour or
    shape that no object in the scene has."""
    kind = sample.meta["question_type"]
    shown = {o[kind] for o in sample.meta["objects"][0]} if absent and kind in ("color", "shape") else set()
    false = [c for c in CANDIDATES[kind] if c != answer_of(sample) and c not in shown]
    return rng.choice(false)


def preference_pairs(samples: list[Sample], config: VQADataConfig, split: str) -> list[PreferencePair]:
    """The correct answer chosen, a false one of the same kind rejected (`config.rejected`; seeded by split)."""
    rng = random.Random(f"{config.seed}:{split}")
    absent = config.rejected == "absent"
    return [PreferencePair(s, answer_of(s), wrong_answer(s, rng, absent)) for s in samples]


def answer_reward(response: str, answer: str) -> float:
    """The verifiable reward: 1 when the response is the answer (compared as the held-out evaluation compares
    them: case, outer spaces and a final full stop aside), else 0."""
    return float(normalize_answer(response) == normalize_answer(answer))


def answer_accuracy(engine: Engine, samples: list[Sample], max_new_tokens: int = 8) -> float:
    """Held-out accuracy with greedy decoding through the Engine (the fine-tuning stages' evaluation)."""
    return evaluate_samples(engine, samples, max_new_tokens, description="held-out accuracy")["accuracy"]


def preference_data(engine: Engine, config: VQADataConfig, split: str) -> Batch:
    """The encoded pairs of `split` (`train_items` of them for train, `eval_items` otherwise)."""
    n = config.train_items if split == "train" else config.eval_items
    return encode_pairs(engine, preference_pairs(vqa_samples(n, config, split), config, split))


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
