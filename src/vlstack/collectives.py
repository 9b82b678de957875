"""The decisions every rank takes alike, and the tallies summed over ranks: no rank waits on one that
took another branch. Without a process group (one process) each is the identity. Any layer may use them:
the Trainer's skip decisions and logs, and a data stream's counts of skipped samples."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vlstack.files import write_json


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_rank_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks together: rank 0 writes what a step prepares
    (converted datasets, a fresh model), the others find it written and only read it."""
    main = not dist.is_initialized() or dist.get_rank() == 0
    if not main:
        barrier()
    yield
    if main:
        barrier()


def main_rank_result(path: Path, compute: Callable[[], dict]) -> dict:
    """Rank 0 computes a run's result (a held-out evaluation of the trained model, say) and writes it to `path`
    as JSON; the other ranks wait for it and read it, so every rank returns the same."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        result = compute()
        write_json(path, result)
        barrier()
        return result
    barrier()
    return json.loads(path.read_text(encoding="utf-8"))


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True only if `flag` is True on every rank, so all ranks take the same branch (no hangs)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """This rank's share of the mean over every rank's items (tokens, say, whose number differs per rank):
    `total` (with its gradient) over the count summed over ranks, times the number of ranks, since DDP and
    FSDP2 average the ranks' gradients. The ranks' values then average to the one-process mean of the global
    batch. Called by every rank alike (it all-reduces the count)."""
    if not dist.is_initialized():
        return total / count
    count = count.detach().clone().to(total.dtype)
    dist.all_reduce(count)
    return total * dist.get_world_size() / count


def global_weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`global_mean` of `values` weighted by `weights` (a 0/1 token mask, say), over every rank's items."""
    return global_mean((values * weights).sum(), weights.sum())


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks, in one all-reduce."""
    if not dist.is_initialized() or not values:
        return values
    tensor = torch.tensor(list(values.values()), device=device, dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / dist.get_world_size()).tolist()))


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
