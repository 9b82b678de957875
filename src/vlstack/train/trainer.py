"""The training loop: one loop for every objective that is a loss on a batch.

AdamW with warmup + cosine, gradient accumulation, global-norm clipping (correct
under sharding), bf16 autocast or fp16 with a (sharded) gradient scaler, activation
checkpointing, optional torch.compile, and exact resume.

Things decided identically on every rank, so no rank ever waits for another that
took a different branch: skipping a step whose loss or gradient is not finite, and
stopping on SIGTERM. Random numbers come from a generator seeded by (seed, step,
rank) at every step, so the random state needs no saving and a resumed run draws
exactly what the uninterrupted run drew.

Under `parallel.mode=deepspeed` a DeepSpeed engine does backward, loss scaling,
clipping and the optimizer step (`deepspeed_engine.py`); the loop, the schedule,
logging, skipping and checkpoint layout stay the same.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from vlstack.checkpoint import atomic_directory
from vlstack.config import to_dict
from vlstack.data.loader import GlobalBatches
from vlstack.errors import CheckpointError, ConfigError, VlstackError
from vlstack.progress import progress_bar
from vlstack.train import deepspeed_engine
from vlstack.train.flops import count_flops, matmul_peak
from vlstack.train.parallel import (
    DistInfo,
    ParallelConfig,
    all_ranks_agree,
    apply_activation_checkpointing,
    mean_over_ranks,
    transformer_blocks,
    wrap_model,
)

Batch = dict[str, torch.Tensor]
Objective = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
Export = Callable[[Path, dict[str, torch.Tensor]], None]
"""Writes inference files (config, consolidated weights, tokenizer) into a checkpoint directory."""

STATE_FILE = "trainer_state.json"
DCP_DIR = "dcp"


@dataclass
class TrainConfig:
    """Optimisation settings (seed defaults: AdamW lr 1e-4, betas 0.9/0.98, weight decay 0.01)."""

    steps: int = 1000
    batch_size: int = 64
    """Global batch per optimizer step, over all ranks and accumulation steps."""
    grad_accum_steps: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    """Applied to matrices only; norms, biases and other 1-D parameters get none."""
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Learning-rate multipliers by parameter-name prefix: {"vision": 0.1} trains the vision tower at
    a tenth of `lr` (LLaVA-OneVision tunes its vision tower at a fifth of the LM's rate)."""
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (over all shards); 0 disables it."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """bf16 autocast is the fast path on GPUs and on CPUs with AVX-512 bf16; fp16 adds a loss scaler."""
    fp16_init_scale: float = 1024.0
    """Initial fp16 loss scale (the seed's DeepSpeed config uses 1024)."""
    activation_checkpointing: bool = False
    compile: bool = False
    """torch.compile each transformer block (worth it on GPUs for long runs)."""
    seed: int = 0
    log_every: int = 10
    save_every: int = 0
    """Write a resumable checkpoint every n steps (0: only at the end and on SIGTERM)."""
    max_skips_in_a_row: int = 20
    """Stop with an error after this many consecutive non-finite steps (the run has diverged)."""
    measure_mfu: bool = True
    """Count the FLOPs of the first step and measure the matmul peak, to log MFU."""
    tensorboard: bool = True
    """Also write the logged metrics as TensorBoard events in OUT_DIR/tensorboard."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


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


def _groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    return parameter_groups(model, config.weight_decay, config.lr, config.lr_scale)


def _has_prefix(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ObjectiveModule(nn.Module):
    """Runs the objective inside `forward`, so DDP and FSDP2 see one forward per micro-step."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model, batch)


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, config: TrainConfig, dataset: Batch,
                 out_dir: Path | None = None, dist_info: DistInfo | None = None, export: Export | None = None):
        """`dataset`: equal-length tensors, batched by row (an `attention_mask` among them counts tokens/s)."""
        self.config = config
        self.out_dir = out_dir
        self.dist = dist_info or DistInfo(0, 1, next(model.parameters()).device)
        self.export = export
        self.model = model
        if config.batch_size % (self.dist.world * config.grad_accum_steps):
            raise VlstackError(f"train.batch_size {config.batch_size} must divide evenly into "
                               f"{self.dist.world} rank(s) x {config.grad_accum_steps} accumulation step(s)")
        self.data = GlobalBatches(dataset, config.batch_size // config.grad_accum_steps, seed=config.seed)
        if config.activation_checkpointing:
            apply_activation_checkpointing(model)
        if config.compile:
            for block in transformer_blocks(model):
                block.compile()
        self.engine = None  # parallel.mode=deepspeed: owns backward, loss scaling, clipping and the step
        if config.parallel.mode == "deepspeed":
            self.engine = deepspeed_engine.build_engine(
                ObjectiveModule(model, objective), _groups(model, config), config,
                self.dist.world, scheduler=lambda optimizer: _lr_schedule(optimizer, config))
            self.module, self.optimizer, self.scheduler = self.engine, self.engine.optimizer, self.engine.lr_scheduler
        else:
            self.module = wrap_model(ObjectiveModule(model, objective), model, config.parallel,
                                     bf16=config.precision == "bf16")
            # groups built after wrapping: FSDP2 replaces the parameters with sharded ones
            self.optimizer = torch.optim.AdamW(_groups(model, config), lr=config.lr, betas=config.betas)
            self.scheduler = _lr_schedule(self.optimizer, config)
        self.scaler = _grad_scaler(config, self.dist.device)
        self.step = 0
        self.history: list[dict] = []
        self._stop_requested = False
        self._flops_per_step: int | None = None  # all ranks, counted before the first step
        self._peak_flops: float | None = None  # one device, in the autocast precision
        self._tensorboard = None

    # --- the loop -----------------------------------------------------------------------

    def fit(self, description: str = "train") -> list[dict]:
        """Train until `config.steps` (or SIGTERM, after which a checkpoint is written)."""
        cfg = self.config
        self.module.train()
        previous = signal.signal(signal.SIGTERM, self._request_stop)
        if cfg.measure_mfu:
            self._peak_flops, _ = matmul_peak(_compute_dtype(cfg.precision), self.dist.device, sizes=(2048,))
            self._flops_per_step = self._count_step_flops()
        skips_in_a_row, window_start, window_samples, window_tokens, window_steps = 0, time.perf_counter(), 0, 0, 0
        try:
            with progress_bar() as progress:
                task = progress.add_task(description, total=cfg.steps, completed=self.step, status="")
                while self.step < cfg.steps:
                    record = self.train_step()
                    skips_in_a_row = skips_in_a_row + 1 if record["skipped"] else 0
                    if skips_in_a_row > cfg.max_skips_in_a_row:
                        raise VlstackError(
                            f"{skips_in_a_row} steps in a row had a {record['reason']} at step {self.step}: the run "
                            "has diverged or the data is broken; lower train.lr or check the batches")
                    window_samples += record.pop("samples")
                    window_tokens += record.pop("tokens")
                    window_steps += not record["skipped"]
                    if record["skipped"] or self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        seconds = time.perf_counter() - window_start
                        record["samples_per_s"] = round(window_samples / seconds, 2)
                        record["tokens_per_s"] = round(window_tokens / seconds, 1)
                        if self._flops_per_step and self._peak_flops:
                            achieved = self._flops_per_step * window_steps / seconds
                            record["mfu"] = round(achieved / (self._peak_flops * self.dist.world), 4)
                        window_start, window_samples, window_tokens, window_steps = time.perf_counter(), 0, 0, 0
                        self._log(record)
                        mfu = f" MFU {record['mfu']:.1%}" if "mfu" in record else ""
                        progress.update(task, status=f"loss {record['loss']:.4f} {record['samples_per_s']:.0f} "
                                                     f"samples/s {record['tokens_per_s']:.0f} tok/s{mfu}")
                    progress.update(task, completed=self.step)
                    if cfg.save_every and self.step % cfg.save_every == 0 and not record["skipped"]:
                        self.save_checkpoint()
                    if not all_ranks_agree(not self._stop_requested, self.dist.device):
                        self._log({"step": self.step, "event": "SIGTERM: checkpoint written, stopping"})
                        break
            if self.out_dir is not None:
                self.save_checkpoint()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self._tensorboard is not None:
                self._tensorboard.close()
        self.module.eval()
        return self.history

    def train_step(self) -> dict:
        """One optimizer step over `grad_accum_steps` micro-batches."""
        cfg = self.config
        torch.manual_seed(((cfg.seed * 1_000_003) + self.step) * 1_009 + self.dist.rank)
        self.optimizer.zero_grad(set_to_none=True)
        losses, sums, samples, tokens = [], {}, 0, 0
        for micro in range(cfg.grad_accum_steps):
            batch = {k: v.to(self.dist.device) for k, v in self.data.next(self.dist.rank, self.dist.world).items()}
            with torch.autocast(self.dist.device.type, dtype=_autocast_dtype(cfg.precision),
                                enabled=cfg.precision != "fp32"):
                loss, metrics = self.module(batch)
            finite = all_ranks_agree(bool(torch.isfinite(loss)), self.dist.device)
            self._backward(loss, finite, last=micro == cfg.grad_accum_steps - 1)
            if not finite:
                return self._skip(loss.item(), "non-finite loss")
            losses.append(loss.item())
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value / cfg.grad_accum_steps
            samples += _rows(batch) * self.dist.world
            tokens += _tokens(batch) * self.dist.world
        applied, grad_norm = self._optimizer_step()
        if not applied:
            return self._skip(sum(losses) / len(losses), "non-finite gradient", grad_norm)
        self.step += 1
        loss = mean_over_ranks(sum(losses) / len(losses), self.dist.device)
        record = {"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm}
        record.update({name: mean_over_ranks(value, self.dist.device) for name, value in sums.items()})
        return {**record, "skipped": False, "samples": samples, "tokens": tokens}

    def _backward(self, loss: torch.Tensor, finite: bool, last: bool) -> None:
        """Accumulate one micro-batch's gradient (none for a non-finite loss: the step is dropped)."""
        if self.engine is not None:
            deepspeed_engine.backward_and_step(self.engine, loss, finite, last)
        elif finite:
            self.scaler.scale(loss / self.config.grad_accum_steps).backward()

    def _optimizer_step(self) -> tuple[bool, float]:
        """Unscale, clip and apply the accumulated gradient (the DeepSpeed engine already has);
        returns whether it was applied (not if a gradient is non-finite on any rank) and its norm."""
        if self.engine is not None:
            return deepspeed_engine.step_outcome(self.engine)
        self.scaler.unscale_(self.optimizer)
        grad_norm = _clip(self.model, self.config.grad_clip)
        if not all_ranks_agree(math.isfinite(grad_norm), self.dist.device):
            self.scaler.update()  # fp16: an overflow lowers the loss scale
            return False, grad_norm
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return True, grad_norm

    def _count_step_flops(self) -> int:
        """FLOPs of one step (forward + backward, all ranks), counted on a rehearsal that changes
        nothing: the data position is put back and the gradients dropped, so a resumed run and
        an uninterrupted one do exactly the same arithmetic afterwards."""
        position = self.data.state_dict()
        batch = {k: v.to(self.dist.device) for k, v in self.data.next(self.dist.rank, self.dist.world).items()}
        self.data.load_state_dict(position)

        def forward_backward() -> None:
            with torch.autocast(self.dist.device.type, dtype=_autocast_dtype(self.config.precision),
                                enabled=self.config.precision != "fp32"):
                loss, _ = self.module(batch)
            if self.engine is not None:
                self.engine.set_gradient_accumulation_boundary(False)  # accumulate only, never step
                self.engine.backward(loss)
            else:
                loss.backward()

        _, flops = count_flops(forward_backward)
        self.optimizer.zero_grad(set_to_none=True)
        return flops * self.config.grad_accum_steps * self.dist.world

    def _skip(self, loss: float, reason: str, grad_norm: float | None = None) -> dict:
        """Drop the step without touching the weights; the step counter does not advance."""
        self.optimizer.zero_grad(set_to_none=True)
        return {"step": self.step + 1, "loss": loss, "grad_norm": grad_norm, "skipped": True, "reason": reason,
                "samples": 0, "tokens": 0}

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.out_dir is None or not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / "train_log.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.config.tensorboard:
            if self._tensorboard is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"))
            for name, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
                    self._tensorboard.add_scalar(f"train/{name}", value, record["step"])

    # --- checkpoints --------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        if self.out_dir is None:
            raise VlstackError("this Trainer has no out_dir to write checkpoints to")
        return self.out_dir / "checkpoint"

    @property
    def _state_dir(self) -> str:
        """Where a checkpoint keeps the training state: DeepSpeed's own format, or DCP."""
        return DCP_DIR if self.engine is None else deepspeed_engine.DEEPSPEED_DIR

    def save_checkpoint(self) -> Path:
        """Write the resumable state (dcp/ or deepspeed/, + trainer_state.json) and the inference files,
        atomically."""
        target = self.checkpoint_dir
        staging = target.with_name(f".{target.name}.staging-{self.step}")
        if self.dist.is_main:
            staging.mkdir(parents=True, exist_ok=True)
        _barrier()
        full = self._save_training_state(staging / self._state_dir)
        if self.dist.is_main:
            with atomic_directory(target) as tmp:
                (staging / self._state_dir).rename(tmp / self._state_dir)
                (tmp / STATE_FILE).write_text(json.dumps(self._trainer_state(), indent=2), encoding="utf-8")
                if self.export is not None:
                    self.export(tmp, {k.removeprefix("model."): v for k, v in full.items()})
            staging.rmdir()
        _barrier()
        return target

    def _save_training_state(self, directory: Path) -> dict[str, torch.Tensor]:
        """Every rank writes its part of the training state; returns the consolidated weights
        for the inference export (on the main rank; empty on the others)."""
        if self.engine is not None:
            deepspeed_engine.save_state(self.engine, directory)
            _barrier()
            wanted = self.dist.is_main and self.export is not None
            return deepspeed_engine.consolidated_weights(directory) if wanted else {}
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        with _quiet_single_process_dcp():
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory))
        return full

    def _trainer_state(self) -> dict:
        return {
            "step": self.step,
            "data": self.data.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "world_size": self.dist.world,
            "config": to_dict(self.config),
        }

    def resume(self, directory: str | Path) -> None:
        """Restore weights, optimizer, schedule, loss scale and data position from a checkpoint."""
        directory = Path(directory)
        state_file = directory / STATE_FILE
        if not state_file.is_file() or not (directory / self._state_dir).is_dir():
            raise CheckpointError(f"{directory} holds no training state ({STATE_FILE} and {self._state_dir}/); "
                                  "pass the `checkpoint` directory of an earlier run's out_dir (DeepSpeed runs "
                                  f"keep theirs in {deepspeed_engine.DEEPSPEED_DIR}/, the other modes in {DCP_DIR}/)")
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{state_file} is corrupt ({exc}); resume from an intact checkpoint") from exc
        if self.engine is not None:
            deepspeed_engine.load_state(self.engine, directory / self._state_dir, state["world_size"],
                                        self.dist.world)
        else:
            self._load_dcp(directory / DCP_DIR)
        self.step = state["step"]
        self.data.load_state_dict(state["data"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def _load_dcp(self, directory: Path) -> None:
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        loaded = {"model": model_state, "optim": optim_state}
        try:
            # partial: parameters that never had a gradient (heads an objective does not use) have no
            # optimizer state in the checkpoint, and keep the fresh (empty) state they get here
            with _quiet_single_process_dcp():
                dcp.load(loaded, checkpoint_id=str(directory), planner=DefaultLoadPlanner(allow_partial_load=True))
        except Exception as exc:  # DCP raises several types for missing/mismatched entries
            raise CheckpointError(f"cannot restore the training state from {directory}: {exc}") from exc
        set_state_dict(self.module, self.optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])


def _rows(batch: Batch) -> int:
    """Samples in a batch: the leading size its tensors share."""
    return len(next(iter(batch.values())))


def _tokens(batch: Batch) -> int:
    """Text tokens in a batch: the ones its `attention_mask` marks (0 for a batch without text)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else 0


def _autocast_dtype(precision: str) -> torch.dtype:
    return torch.float16 if precision == "fp16" else torch.bfloat16


def _compute_dtype(precision: str) -> torch.dtype:
    return torch.float32 if precision == "fp32" else _autocast_dtype(precision)


def _lr_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup_steps, config.steps, config.min_lr_ratio))


def _grad_scaler(config: TrainConfig, device: torch.device):
    enabled = config.precision == "fp16" and config.parallel.mode != "deepspeed"  # DeepSpeed scales its own loss
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


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
