"""The decisions every rank takes alike, and the tallies summed over ranks: no rank waits on one that
took another branch. Without a process group (one process) each is the identity. Any layer may use them:
the Trainer's skip decisions and logs, and a data stream's counts of skipped samples."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True only if `flag` is True on every rank, so all ranks take the same branch (no hangs)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_ranks(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def gather_objects(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (a list of one without a process group)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_over_ranks(counts: dict[str, int]) -> dict[str, int]:
    """A per-rank tally summed over the ranks, key by key."""
    total: dict[str, int] = {}
    for part in gather_objects(counts):
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total
