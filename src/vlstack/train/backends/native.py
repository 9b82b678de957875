"""The native backend: one process, DDP or FSDP2 (ZeRO-3), PyTorch's AdamW, a gradient scaler for fp16.

FSDP2 (`fully_shard`) shards parameters, gradients and optimizer state per transformer block and
once more for the remaining parameters at the root, which is PyTorch's native ZeRO-3. The
training state is written with torch.distributed.checkpoint (DCP), which survives a change of the
number of ranks.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from vlstack.collectives import all_ranks_agree
from vlstack.errors import CheckpointError, ConfigError
from vlstack.models.initialize import is_empty, materialize
from vlstack.models.parallelize import fully_shard_blocks
from vlstack.train.config import Fill, TrainConfig
from vlstack.train.distributed import DistInfo
from vlstack.train.optim import config_groups, lr_schedule

DCP_DIR = "dcp"


class NativeBackend:
    state_dir = DCP_DIR

    def __init__(self, module: nn.Module, model: nn.Module, config: TrainConfig, dist: DistInfo, fill: Fill | None):
        self.config, self.model, self.dist = config, model, dist
        self.module = _wrap(module, model, config, dist.device, fill)
        # groups built after wrapping: FSDP2 replaces the parameters with sharded ones
        self.optimizer = torch.optim.AdamW(config_groups(model, config), lr=config.lr, betas=config.betas)
        self.scheduler = lr_schedule(self.optimizer, config)
        self.scaler = _grad_scaler(config, dist.device)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # a non-finite loss makes the gradient non-finite: `step` then drops it
        self.scaler.scale(loss / self.config.grad_accum_steps).backward()

    def step(self) -> tuple[bool, float]:
        self.scaler.unscale_(self.optimizer)
        grad_norm = _clip(self.model, self.config.grad_clip)  # the step's one read of the device
        if not all_ranks_agree(math.isfinite(grad_norm), self.dist.device):
            self.scaler.update()  # fp16: an overflow lowers the loss scale
            return False, grad_norm
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return True, grad_norm

    def rehearsal_backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def last_lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, directory: Path, full_weights: bool) -> dict[str, torch.Tensor]:
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        with _quiet_single_process_dcp():
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory))
        return full if full_weights else {}

    def load(self, directory: Path, saved_world: int) -> None:
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        loaded = {"model": model_state, "optim": optim_state}
        try:
            # partial: parameters that never had a gradient (heads an objective does not use) have no
            # optimizer state in the checkpoint, and keep the fresh (empty) state they get here
            with _quiet_single_process_dcp():
                dcp.load(loaded, checkpoint_id=str(directory), planner=DefaultLoadPlanner(allow_partial_load=True))
        except (Exception, CheckpointException) as exc:  # DCP's own exception is a BaseException
            raise CheckpointError(f"cannot restore the training state from {directory}: "
                                  f"{type(exc).__name__}: {str(exc)[:2000]}") from None
        set_state_dict(self.module, self.optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def _wrap(module: nn.Module, model: nn.Module, config: TrainConfig, device: torch.device, fill: Fill | None
          ) -> nn.Module:
    """`module` (whose forward runs the objective on `model`) wrapped for the parallel mode. A model built by
    `build_empty` gets its weights from `fill` here: under FSDP2 once it is sharded, so each rank holds and
    fills only its shards; otherwise before DDP copies rank 0's weights to the others."""
    mode = config.parallel.mode
    if mode == "fsdp2":
        cpu_offload = config.parallel.cpu_offload
        sharded = fully_shard_blocks(module, model, bf16=config.precision == "bf16", cpu_offload=cpu_offload)
        _fill_empty(model, torch.device("cpu") if cpu_offload else device, fill)
        return sharded
    _fill_empty(model, device, fill)
    if mode == "single":
        return module
    from torch.nn.parallel import DistributedDataParallel

    # not every objective uses every head (ITC alone skips the fusion encoder)
    return DistributedDataParallel(module, find_unused_parameters=True)


def _fill_empty(model: nn.Module, device: torch.device, fill: Fill | None) -> None:
    if not is_empty(model):
        return
    if fill is None:
        raise ConfigError("the model was built without weights (build_empty) but the Trainer was given no `fill` "
                          "to initialise or load them")
    materialize(model, device)
    fill(model)


def _grad_scaler(config: TrainConfig, device: torch.device):
    enabled = config.precision == "fp16"
    if config.parallel.mode == "fsdp2":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, init_scale=config.fp16_init_scale, enabled=enabled)
    return torch.amp.GradScaler(device.type, init_scale=config.fp16_init_scale, enabled=enabled)


def _clip(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm; under FSDP2 the norm is reduced over all shards."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


@contextlib.contextmanager
def _quiet_single_process_dcp() -> Iterator[None]:
    """DCP warns that it runs without a process group; for a single process that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
