"""Instruction conversations for training: strict checks, and the whole set as model-ready tensors.

Readers (`sources.read_llava`, `read_messages`, `read_conversations`) account for every
record, as a cleaning run needs. Training needs more: a conversation whose turns do not
alternate, that ends on an unanswered question, has an empty turn, or whose `<image>`
placeholders disagree with its images is an error named before the first step, never a
sample that trains on the wrong tokens. `encode_conversations` then runs the
`SampleCollator` (chat template, `<image>` expansion, assistant-only labels, length
checks) over the set and stacks it into the equal-length tensors the `Trainer` batches.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlstack.data.augment import AugmentConfig
from vlstack.data.collate import IGNORE_INDEX, SampleCollator, SampleRejected
from vlstack.data.schema import IMAGE_TOKEN, ROLES, Rejected, Sample
from vlstack.data.shards import read_shards
from vlstack.data.sources import read_conversations
from vlstack.data.stream import Skip
from vlstack.errors import DataError
from vlstack.progress import progress_bar

logger = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]
REFUSAL = "refusal"
"""`meta` key: True on a sample whose answer is a refusal (the safety loss up-weights it)."""
UNSAFE_ANSWER = "unsafe_answer"
"""`meta` key: the compliant answer a harmful request must not get (the unlikelihood target)."""
SHOWN_PROBLEMS = 5
"""How many bad records an error message lists (it always gives the total)."""


def conversation_problem(sample: Sample) -> str | None:
    """Why `sample` cannot train as a conversation, or None when it can."""
    turns = sample.conversations
    if not turns:
        return "has no conversation turns"
    for i, turn in enumerate(turns):
        role, value = turn.get("from"), turn.get("value")
        expected = ROLES[i % 2]
        if role not in ROLES:
            return f"turn {i} has role {role!r}; valid roles: {', '.join(ROLES)}"
        if role != expected:
            return f"turn {i} is {role!r} where {expected!r} was expected; turns alternate human, gpt, human, ..."
        if not isinstance(value, str) or not value.strip():
            return f"turn {i} ({role}) is empty"
        if role == "gpt" and IMAGE_TOKEN in value:
            return f"turn {i} (gpt) holds {IMAGE_TOKEN}; images belong in human turns"
    if turns[-1]["from"] != "gpt":
        return f"ends with a human turn (turn {len(turns) - 1}) that no gpt turn answers"
    placeholders = sum(turn["value"].count(IMAGE_TOKEN) for turn in turns)
    if placeholders < len(sample.images):
        return (f"has {placeholders} {IMAGE_TOKEN} placeholder(s) for {len(sample.images)} image(s): "
                f"put one {IMAGE_TOKEN} in a human turn for each image")
    if placeholders > len(sample.images):
        return f"has more {IMAGE_TOKEN} placeholders ({placeholders}) than images ({len(sample.images)})"
    return None


def check_conversations(samples: Sequence[Sample], source: str) -> None:
    """Raise one DataError naming the bad conversations of `source` (the first few, and how many)."""
    problems = [(s.id, problem) for s in samples if (problem := conversation_problem(s))]
    if problems:
        listed = "\n".join(f"  {sample_id}: {problem}" for sample_id, problem in problems[:SHOWN_PROBLEMS])
        raise DataError(f"{len(problems)} of {len(samples)} conversation(s) in {source} are malformed:\n{listed}")


def load_conversations(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """Every conversation of a shard directory (`manifest.jsonl` and tars of samples with `conversations`)
    or of a LLaVA (`conversations`) or OpenAI (`messages`) JSON / JSON-lines file (images under
    `image_root`, by default the file's folder), checked for training; any record that cannot train is a
    DataError that lists the bad ones."""
    path = Path(path)
    items = read_shards(path) if path.is_dir() else read_conversations(path, image_root or path.parent)
    samples, rejected = [], []
    for item in items:
        (rejected if isinstance(item, Rejected) else samples).append(item)
    if rejected:
        listed = "\n".join(f"  {r.id}: {r.reason}: {r.detail}" for r in rejected[:SHOWN_PROBLEMS])
        raise DataError(f"{len(rejected)} record(s) of {path} cannot be read:\n{listed}\nfix or remove them")
    if not samples:
        raise DataError(f"{path} holds no conversations")
    check_conversations(samples, str(path))
    return samples


def unsafe_variant(sample: Sample) -> Sample:
    """The conversation with its last (refusing) answer replaced by the compliant answer it must not give."""
    turns = [dict(turn) for turn in sample.conversations]
    turns[-1]["value"] = sample.meta[UNSAFE_ANSWER]
    return dataclasses.replace(sample, conversations=turns)


@dataclass
class ConversationEncoder:
    """A conversation -> one training row: the `encode` of a `StreamingBatches` (it runs in the loader's
    workers), and of `encode_conversations`.

    The row holds `input_ids` / `labels` (labels on the assistant's text only), `pixels` [n, 3, S, S],
    `refusal` (the answer is a refusal) and, with `unsafe`, the ids and labels of the compliant answer a
    harmful request must not get (empty without one). A caption or a VQA sample is one turn. A malformed
    conversation (`conversation_problem`) or one the collator leaves out (too long, no supervised token,
    undecodable image) raises `Skip`."""

    collator: SampleCollator
    unsafe: bool = False
    augment: AugmentConfig | None = None
    """Label-preserving image augmentation (`vlstack.data.augment`), drawn from the stream's `rng`; None: off."""

    def __call__(self, sample: Sample, rng: random.Random | None = None) -> dict[str, Any]:
        problem = None if _single_turn(sample) else conversation_problem(sample)
        if problem is not None:
            raise Skip("bad_conversation", problem)
        try:
            input_ids, labels = self.collator.encode(sample)
            pixels = self.collator.image_tensors(sample, self.augment, rng)  # [n, 3, S, S]
        except SampleRejected as error:
            raise Skip(error.reason, str(error)) from None
        row = {"input_ids": input_ids, "labels": labels, "pixels": pixels, "refusal": bool(sample.meta.get(REFUSAL))}
        if self.unsafe:
            row["unsafe_input_ids"], row["unsafe_labels"] = _unsafe_row(sample, self.collator)
        return row


def _single_turn(sample: Sample) -> bool:
    """A captioned image or an answered question trains as one turn (`collate.sample_messages`): LLaVA's
    stage 1 trains the projector on captions."""
    return not sample.conversations and bool(sample.images) and bool(sample.text or sample.answers)


@dataclass
class ConversationCollate:
    """Rows of `ConversationEncoder` -> a batch: `input_ids`, `attention_mask`, `labels` [B, T] (right-padded),
    `pixel_values` [B, K, 3, S, S] and `image_mask` [B, K] (K: most images in a row), `refusal` [B]; with
    `unsafe`, also `unsafe_input_ids`, `unsafe_attention_mask`, `unsafe_labels` [B, T'] (all ignored on
    rows without an unsafe answer)."""

    pad_token_id: int
    image_size: int
    unsafe: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> Batch:
        data = _stack([(row["input_ids"], row["labels"]) for row in rows], self.pad_token_id)
        data["refusal"] = torch.tensor([row["refusal"] for row in rows])
        most = max(len(row["pixels"]) for row in rows)
        data["pixel_values"] = torch.zeros(len(rows), most, 3, self.image_size, self.image_size)  # [B, K, 3, S, S]
        data["image_mask"] = torch.zeros(len(rows), most, dtype=torch.bool)  # [B, K]
        for number, row in enumerate(rows):
            data["pixel_values"][number, : len(row["pixels"])] = row["pixels"]
            data["image_mask"][number, : len(row["pixels"])] = True
        if self.unsafe:
            unsafe = _stack([(row["unsafe_input_ids"], row["unsafe_labels"]) for row in rows], self.pad_token_id)
            data.update({f"unsafe_{k}": v for k, v in unsafe.items()})
        return data


def encode_conversations(samples: Sequence[Sample], collator: SampleCollator, unsafe: bool = False,
                         description: str = "encode conversations") -> tuple[Batch, list[dict]]:
    """Conversations -> (tensors, rejected): a small set as one in-memory batch the `Trainer` takes whole
    (`ConversationCollate`'s tensors, one row per sample). Samples that cannot train are returned in
    `rejected` (`{"id", "reason", "detail"}`); a set that keeps none is a DataError. Large sets stream
    instead (`vlstack.data.stream`)."""
    encoder = ConversationEncoder(collator, unsafe)
    rows, rejected = [], []
    with progress_bar(transient=True) as progress:
        for sample in progress.track(samples, description=description):
            try:
                rows.append(encoder(sample))
            except Skip as skip:
                rejected.append({"id": sample.id, "reason": skip.reason, "detail": skip.detail})
    if not rows:
        reasons = dict(Counter(r["reason"] for r in rejected))
        first = rejected[0] if rejected else {"id": None, "detail": "no samples"}
        raise DataError(f"none of the {len(samples)} sample(s) can train ({reasons}); first: {first['id']}: "
                        f"{first['detail']}")
    return ConversationCollate(collator.tokenizer.pad_token_id, collator.cfg.vision.image_size, unsafe)(rows), rejected


def _unsafe_row(sample: Sample, collator: SampleCollator) -> tuple[list[int], list[int]]:
    """Ids of the unsafe continuation, labelled on the last answer's text only (not on earlier turns,
    nor on its closing `<|im_end|>`); empty for a sample without one."""
    if UNSAFE_ANSWER not in sample.meta:
        return [], []
    ids, labels = collator.encode(unsafe_variant(sample))
    end = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX)  # the closing <|im_end|>
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return ids, [label if start <= i < end else IGNORE_INDEX for i, label in enumerate(labels)]


def _stack(rows: list[tuple[list[int], list[int]]], pad: int) -> Batch:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [N, T]
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # [N, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [N, T]
    for row, (ids, target) in enumerate(rows):
        if ids:
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(target)
            attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
