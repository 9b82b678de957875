"""The one `device` setting every command reads: `auto` (CUDA when there is a GPU, else the CPU), `cpu`,
`cuda` or `cuda:N`. Training configs carry it as `train.device`, inference as `engine.device`, evaluation
and cleaning as `device`; all go through `resolve_device`, so a name means the same thing everywhere."""

from __future__ import annotations

import torch

from vlstack.errors import ConfigError

DEVICE_HELP = "auto (CUDA when a GPU is present, else cpu), cpu, cuda or cuda:N"


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device `name` means; a bare `cuda` is this process's GPU (`local_rank` under torchrun),
    which also becomes the current CUDA device. A GPU asked for on a machine without one is a ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device; use {DEVICE_HELP}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"device {name!r}: vlstack runs on {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but PyTorch sees no CUDA GPU on this machine "
                          "(torch.cuda.is_available() is False); use device=auto or cpu")
    if device.index is None:
        device = torch.device("cuda", local_rank)
    if device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    torch.cuda.set_device(device)
    return device
