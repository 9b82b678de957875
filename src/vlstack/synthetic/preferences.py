"""Synthetic preference data: shape-scene questions whose answers the scene fixes, each with a rejected answer.

The items are the `shapes_vqa` instruction conversations: one question on a shape scene (colour, shape,
count, count of a colour, position). The last (gpt) turn is the chosen answer and the reference a rule
checks for RL; `meta["rejected"]` (`vlstack.align.preference.REJECTED`) is a wrong answer of the same
kind, which only the image tells apart from the chosen one. Train and held-out items come from different
splits.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from vlstack.align.preference import REJECTED
from vlstack.data.schema import Sample
from vlstack.data.shards import write_shards
from vlstack.errors import DataError
from vlstack.synthetic.instructions import instruction_samples
from vlstack.synthetic.scenes import COLORS, PLACES_EN, SHAPES

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
Rejection = Literal["wrong", "absent"]


def vqa_samples(n: int, split: str, question_types: Sequence[str] = QUESTION_TYPES, seed: int = 0) -> list[Sample]:
    """The first `n` open `shapes_vqa` questions of `split` whose question type is in `question_types` (the
    multiple-choice and yes/no ones have other answers than their type's `CANDIDATES`)."""
    unknown = sorted(set(question_types) - set(QUESTION_TYPES))
    if unknown or not question_types:
        raise DataError(f"question types {list(question_types)!r} must be a non-empty subset of "
                        f"{', '.join(QUESTION_TYPES)}")
    drawn = n
    while True:
        samples = [s for s in instruction_samples(DATASET, drawn, seed, split)
                   if s.meta["question_type"] in question_types and s.meta["form"] == "open"]
        if len(samples) >= n:
            return samples[:n]
        drawn *= 2


def wrong_answer(sample: Sample, rng: random.Random, absent: bool = False) -> str:
    """An answer of the sample's own question type that its scene makes false; with `absent`, a colour or
    shape that no object in the scene has (a hallucination)."""
    kind = sample.meta["question_type"]
    shown = {o[kind] for o in sample.meta["objects"][0]} if absent and kind in ("color", "shape") else set()
    answer = sample.conversations[-1]["value"]
    return rng.choice([c for c in CANDIDATES[kind] if c != answer and c not in shown])


def preference_samples(n: int, split: str, question_types: Sequence[str] = QUESTION_TYPES,
                       rejected: Rejection = "wrong", seed: int = 0) -> list[Sample]:
    """`vqa_samples` with `meta["rejected"]`: a false answer of the same kind (`rejected`: `wrong`, any
    other answer; `absent`, for colour and shape questions one that no object in the scene has)."""
    rng = random.Random(f"{seed}:{split}")
    samples = vqa_samples(n, split, question_types, seed)
    for sample in samples:
        sample.meta[REJECTED] = wrong_answer(sample, rng, rejected == "absent")
    return samples


def write_preferences(out: str | Path, n: int, split: str = "train", question_types: Sequence[str] = QUESTION_TYPES,
                      rejected: Rejection = "wrong", seed: int = 0, samples_per_shard: int = 1000) -> Path:
    """`preference_samples` as a shard directory, the form alignment reads."""
    write_shards(preference_samples(n, split, question_types, rejected, seed), out, samples_per_shard)
    return Path(out)
