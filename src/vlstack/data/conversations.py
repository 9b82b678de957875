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
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from vlstack.data.collate import IGNORE_INDEX, SampleCollator
from vlstack.data.schema import IMAGE_TOKEN, ROLES, Rejected, Sample
from vlstack.data.shards import read_shards
from vlstack.data.sources import read_conversations
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


def encode_conversations(samples: Sequence[Sample], collator: SampleCollator, unsafe: bool = False,
                         chunk: int = 256, description: str = "encode conversations") -> tuple[Batch, list[dict]]:
    """Conversations -> (tensors, rejected): equal-length tensors for the `Trainer`, one row per sample.

    `input_ids`, `attention_mask`, `labels` [N, T] (right-padded; labels only on assistant tokens);
    `pixel_values` [N, K, 3, S, S] and `image_mask` [N, K] (K: most images in a sample); `refusal` [N]
    (the answer is a refusal). With `unsafe`, also `unsafe_input_ids`, `unsafe_attention_mask` and
    `unsafe_labels` [N, T']: the same prompt with the compliant answer a harmful request must not get,
    labelled on that answer's tokens (all ignored on rows without one). Samples the collator leaves
    out (too long, no supervised token, ...) are returned in `rejected` with their reasons; a set that
    keeps none is a DataError.
    """
    rows: list[tuple[list[int], list[int]]] = []
    images: list[torch.Tensor] = []  # [n_i, 3, S, S] per kept sample
    kept: list[Sample] = []
    rejected: list[dict] = []
    by_id = {s.id: s for s in samples}
    with progress_bar(transient=True) as progress:
        for start in progress.track(range(0, len(samples), chunk), description=description):
            batch = collator(samples[start : start + chunk])
            rejected.extend(batch["rejected"])
            pixels = batch["pixel_values"].split(batch["image_counts"].tolist())
            for row, sample_id in enumerate(batch["ids"]):
                width = int(batch["attention_mask"][row].sum())
                rows.append((batch["input_ids"][row, :width].tolist(), batch["labels"][row, :width].tolist()))
                images.append(pixels[row])
                kept.append(by_id[sample_id])
    if not rejected and not kept:
        raise DataError("no samples to encode")
    if not kept:
        reasons = dict(Counter(r["reason"] for r in rejected))
        first = rejected[0]
        raise DataError(f"none of the {len(samples)} sample(s) can train ({reasons}); first: {first['id']}: "
                        f"{first['detail']}")
    pad = collator.tokenizer.pad_token_id
    data = _stack(rows, pad)
    data["refusal"] = torch.tensor([bool(s.meta.get(REFUSAL)) for s in kept])
    most = max(len(x) for x in images)
    size = images[0].shape[-1] if most else collator.cfg.image_size
    data["pixel_values"] = torch.zeros(len(kept), most, 3, size, size)  # [N, K, 3, S, S]
    data["image_mask"] = torch.zeros(len(kept), most, dtype=torch.bool)  # [N, K]
    for row, pixels in enumerate(images):
        data["pixel_values"][row, : len(pixels)] = pixels
        data["image_mask"][row, : len(pixels)] = True
    if unsafe:
        data.update({f"unsafe_{k}": v for k, v in _stack([_unsafe_row(s, collator) for s in kept], pad).items()})
    return data, rejected


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
