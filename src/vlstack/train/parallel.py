"""Process groups and model wrapping: single | ddp | fsdp2 (ZeRO-3) | deepspeed (ZeRO-3).

Launch several processes with `torchrun --nproc_per_node=N`; on CPUs the gloo
backend is used, on GPUs NCCL. FSDP2 (`fully_shard`) shards parameters, gradients
and optimizer state per transformer block and once more for the remaining
parameters at the root, which is PyTorch's native ZeRO-3. `deepspeed` hands the
model to a DeepSpeed engine instead (see `deepspeed_engine.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from vlstack.errors import ConfigError
from vlstack.models.language import decoder


@dataclass
class ParallelConfig:
    """How the model is spread over processes."""

    mode: Literal["single", "ddp", "fsdp2", "deepspeed"] = "single"
    """single: one process; ddp: replicated weights, averaged gradients; fsdp2: ZeRO-3 sharding;
    deepspeed: ZeRO-3 through a DeepSpeed engine (`pip install 'vlstack[deepspeed]'`)."""
    cpu_offload: bool = False
    """fsdp2 only: keep sharded parameters, gradients and optimizer state in CPU memory."""
    deepspeed_config: str | None = None
    """deepspeed only: a DeepSpeed config file (YAML or JSON), e.g. configs/deepspeed_zero3.yaml.
    train.* fills the settings it leaves out and must agree with those it sets. None: plain ZeRO-3."""
    nvme_path: str | None = None
    """deepspeed only: the NVMe directory for a config that offloads to `nvme` (fills its nvme_path)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(mode: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment (or none for `single`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "single":
        if world > 1:
            raise ConfigError(f"{world} processes were launched but parallel.mode is 'single'; "
                              "set --set train.parallel.mode=ddp, fsdp2 or deepspeed")
        return DistInfo(0, 1, _device(0))
    if "RANK" not in os.environ:
        raise ConfigError(f"parallel.mode={mode} needs a launcher: run under torchrun --nproc_per_node=N")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), device)


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of the vision tower, the language model and the fusion encoder."""
    return [*model.vision.blocks, *decoder(model.language_model).layers, *model.fusion.blocks]


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing as wrap

    targets = set(map(id, transformer_blocks(model)))
    wrap(model, check_fn=lambda module: id(module) in targets)
    # a recomputed decoder layer would append its keys and values to the KV cache a second time
    # (a shape error on padded batches); training needs no cache, generate() asks for one itself
    model.language_model.config.use_cache = False


def wrap_model(module: nn.Module, model: nn.Module, config: ParallelConfig, bf16: bool) -> nn.Module:
    """Wrap `module` (whose forward runs the objective on `model`) for the chosen parallel mode."""
    if config.mode == "single":
        return module
    if config.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # not every objective uses every head (ITC alone skips the fusion encoder)
        return DistributedDataParallel(module, find_unused_parameters=True)
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if config.cpu_offload else OffloadPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=mixed, offload_policy=offload)
    fully_shard(module, mp_policy=mixed, offload_policy=offload)
    return module


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
