"""AdamW parameter groups and the warmup + cosine learning-rate schedule (both backends use them)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vlstack.errors import ConfigError
from vlstack.train.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float, lr: float, lr_scale: dict[str, float]) -> list[dict]:
    """AdamW groups: decay on weight matrices, none on norms, biases and scalars; each at `lr` times
    the multiplier of the first `lr_scale` prefix its name starts with (1 if none)."""
    names = [name for name, _ in model.named_parameters()]
    unknown = [prefix for prefix in lr_scale if not any(_has_prefix(name, prefix) for name in names)]
    if unknown:
        top = sorted({name.split(".")[0] for name in names})
        raise ConfigError(f"train.lr_scale names {unknown}, which match no parameter; top-level modules: {top}")
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            scale = next((value for prefix, value in lr_scale.items() if _has_prefix(name, prefix)), 1.0)
            groups.setdefault((scale, param.ndim >= 2), []).append(param)
    return [{"params": params, "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0}
            for (scale, decay), params in groups.items()]


def config_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    return parameter_groups(model, config.weight_decay, config.lr, config.lr_scale)


def _has_prefix(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup_steps, config.steps, config.min_lr_ratio))
