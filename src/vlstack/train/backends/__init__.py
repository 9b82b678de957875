"""The Trainer's backends: what runs backward and the optimizer step, and how training state is saved.

Two implementations of one interface (`Backend`): `native` (one process, DDP or FSDP2, with
PyTorch's AdamW, the warmup + cosine schedule and a gradient scaler; state in DCP) and
`deepspeed` (a DeepSpeed ZeRO-3 engine; state in DeepSpeed's own format). The Trainer's loop is
the same for both; `build_backend` is the one place that chooses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from vlstack.errors import ConfigError
from vlstack.models.initialize import is_empty
from vlstack.train.config import Fill, TrainConfig
from vlstack.train.distributed import DistInfo


class Backend(Protocol):
    module: nn.Module
    """What the Trainer calls forward on: the objective's module, wrapped for the parallel mode."""
    optimizer: torch.optim.Optimizer
    state_dir: str
    """The folder of a checkpoint that holds this backend's training state."""

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Accumulate one micro-batch's gradient (`last`: the step's last micro-batch)."""

    def step(self) -> tuple[bool, float]:
        """Unscale, clip and apply the accumulated gradient unless it is not finite on some rank (a non-finite
        loss makes it so): (applied, gradient norm before clipping)."""

    def rehearsal_backward(self, loss: torch.Tensor) -> None:
        """A backward pass that only accumulates (for counting a step's FLOPs); the caller drops the gradient."""

    def zero_grad(self) -> None: ...

    def last_lr(self) -> float: ...

    def save(self, directory: Path, full_weights: bool) -> dict[str, torch.Tensor]:
        """Write this rank's part of the training state into `directory`; returns the consolidated weights
        (on the main rank, when `full_weights`; else empty)."""

    def load(self, directory: Path, saved_world: int) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What the backend keeps beside its state folder in trainer_state.json (schedule, loss scale)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_backend(module: nn.Module, model: nn.Module, config: TrainConfig, dist: DistInfo, fill: Fill | None = None
                  ) -> Backend:
    """The backend of `config.parallel.mode` around `module` (whose forward runs the objective on `model`); a
    model built by `build_empty` gets its weights from `fill` (native modes only)."""
    if not config.parallel.native:
        from vlstack.train.backends.deepspeed import DeepSpeedBackend

        if is_empty(model):
            raise ConfigError("parallel.mode=deepspeed builds its engine from a whole model; build it with "
                              "empty=False")
        return DeepSpeedBackend(module, model, config, dist)
    from vlstack.train.backends.native import NativeBackend

    return NativeBackend(module, model, config, dist, fill)
