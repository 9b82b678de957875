"""Process groups: which rank this is, on which device, and what each rank holds. (The decisions every
rank must take alike are `vlstack.collectives`.)

Launch several processes with `torchrun --nproc_per_node=N`; on CPUs the gloo backend is
used, on GPUs NCCL. How the model is then spread over them is the backend's business
(`vlstack.train.backends`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vlstack.devices import resolve_device
from vlstack.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(mode: str, device: str = "auto") -> DistInfo:
    """Join the process group that torchrun describes in the environment (or none for `single`), on
    `device` (`vlstack.devices`: under torchrun a bare `cuda` or `auto` is the rank's LOCAL_RANK GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "single":
        if world > 1:
            raise ConfigError(f"{world} processes were launched but parallel.mode is 'single'; "
                              "set --set train.parallel.mode=ddp, fsdp2 or deepspeed")
        return DistInfo(0, 1, resolve_device(device))
    if "RANK" not in os.environ:
        raise ConfigError(f"parallel.mode={mode} needs a launcher: run under torchrun --nproc_per_node=N")
    placed = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if placed.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), placed)


def local_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes of parameters (and optimizer state) held by this rank: a shard's share under FSDP2."""
    def nbytes(t: torch.Tensor) -> int:
        local = t.to_local() if hasattr(t, "to_local") else t
        return local.numel() * local.element_size()

    total = sum(nbytes(p) for p in model.parameters())
    if optimizer is not None:
        total += sum(nbytes(v) for state in optimizer.state.values() for v in state.values()
                     if isinstance(v, torch.Tensor) and v.ndim > 0)
    return total
