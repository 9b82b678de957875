"""The training loop: AdamW, warmup + cosine, bf16 autocast, gradient clipping, logging.

The Trainer knows nothing about what it trains: an objective maps (model, batch)
to (loss, metrics). A step whose loss or gradient is not finite is skipped with a
logged reason instead of poisoning the weights.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import torch
from torch import nn

from vlstack.errors import VlstackError
from vlstack.progress import progress_bar

Batch = dict[str, torch.Tensor]
Objective = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainConfig:
    """Optimisation settings (seed defaults: AdamW lr 1e-4, betas 0.9/0.98, weight decay 0.01)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    """Applied to matrices only; norms, biases and other 1-D parameters get none."""
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables it."""
    precision: Literal["fp32", "bf16"] = "bf16"
    """bf16 autocast is the fast path on GPUs and on CPUs with AVX-512 bf16."""
    seed: int = 0
    log_every: int = 10
    max_skips_in_a_row: int = 20
    """Stop with an error after this many consecutive non-finite steps (the run has diverged)."""


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices, none on norms, biases and scalars."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, config: TrainConfig, log_path: Path | None = None):
        self.model = model
        self.objective = objective
        self.config = config
        self.log_path = log_path
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: warmup_cosine(step, config.warmup_steps, config.steps, config.min_lr_ratio),
        )
        self.step = 0
        self.history: list[dict] = []

    def fit(self, batches: Iterator[Batch], description: str = "train") -> list[dict]:
        """Run `config.steps` optimizer steps over `batches`; returns the logged history."""
        self.model.train()
        start = time.perf_counter()
        skips_in_a_row = 0
        with progress_bar() as progress:
            task = progress.add_task(description, total=self.config.steps, status="")
            while self.step < self.config.steps:
                record = self.train_step(next(batches))
                skips_in_a_row = skips_in_a_row + 1 if record["skipped"] else 0
                if skips_in_a_row > self.config.max_skips_in_a_row:
                    raise VlstackError(
                        f"{skips_in_a_row} steps in a row had a {record['reason']} at step {self.step}: the run "
                        "has diverged or the data is broken; lower train.lr or check the batches"
                    )
                if record["skipped"] or self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    record["elapsed_s"] = round(time.perf_counter() - start, 2)
                    self._log(record)
                    progress.update(task, status=f"loss {record['loss']:.4f}")
                progress.update(task, completed=self.step)
        self.model.eval()
        return self.history

    def train_step(self, batch: Batch) -> dict:
        cfg = self.config
        autocast = torch.autocast(_device_type(batch), dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        with autocast:
            loss, metrics = self.objective(self.model, batch)
        record = {"step": self.step + 1, "loss": loss.item(), "lr": self.scheduler.get_last_lr()[0], **metrics}
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return self._skip(record, "non-finite loss")
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        record["grad_norm"] = grad_norm.item()
        if not torch.isfinite(grad_norm):
            return self._skip(record, "non-finite gradient")
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        record["skipped"] = False
        return record

    def _skip(self, record: dict, reason: str) -> dict:
        """Drop the batch without touching the weights; the step counter does not advance."""
        self.optimizer.zero_grad(set_to_none=True)
        record.update(skipped=True, reason=reason)
        return record

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _device_type(batch: Batch) -> str:
    return next(iter(batch.values())).device.type
