"""The training loop: one loop for every objective that is a loss on a batch.

AdamW with warmup + cosine, gradient accumulation, global-norm clipping (correct
under sharding), bf16 autocast or fp16 with a (sharded) gradient scaler, activation
checkpointing, optional torch.compile, and exact resume. A backend
(`vlstack.train.backends`: native single / DDP / FSDP2, or DeepSpeed) runs backward
and the optimizer step and saves the training state; the loop, logging, skipping and
the checkpoint layout are the same for both.

Things decided identically on every rank, so no rank ever waits for another that
took a different branch: skipping a step whose loss or gradient is not finite, and
stopping on SIGTERM. Random numbers come from a generator seeded by (seed, step,
rank) at every step, so the random state needs no saving and a resumed run draws
exactly what the uninterrupted run drew.

Batches come from a `BatchSource`: `GlobalBatches` over an in-memory dataset,
`StreamingBatches` from shard directories, or any object with `next(rank, world)`,
`state_dict()` and `load_state_dict()` (PPO's and GRPO's rollouts). Its position is part
of every checkpoint; a source that also has `tensor_state()` / `load_tensor_state()` keeps
tensors there too (`data.safetensors`). An empty batch (a stream that had to skip every
sample of it) skips the step on all ranks; a source with `finished_epochs()` gets each
epoch's accounting (samples trained, skipped by reason, summed over ranks) logged.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlstack.checkpoint import commit_directory, recover_directory
from vlstack.collectives import all_ranks_agree, barrier, main_rank_first, mean_over_ranks, sum_over_ranks
from vlstack.config import to_dict
from vlstack.data.loader import GlobalBatches
from vlstack.errors import CheckpointError, ConfigError, VlstackError
from vlstack.files import write_json
from vlstack.models.initialize import local_rows
from vlstack.models.parallelize import apply_activation_checkpointing, compile_blocks
from vlstack.progress import progress_bar
from vlstack.train.backends import build_backend
from vlstack.train.config import Fill, ParallelConfig, TrainConfig
from vlstack.train.distributed import DistInfo, local_bytes
from vlstack.train.flops import count_flops, matmul_peak
from vlstack.train.signature import check_signature, sign_training_state

Batch = dict[str, torch.Tensor]
Objective = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
Export = Callable[[Path, dict[str, torch.Tensor]], None]
"""Writes inference files (config, consolidated weights, tokenizer) into a checkpoint directory."""

STATE_FILE = "trainer_state.json"
DATA_TENSORS = "data.safetensors"
__all__ = ["Batch", "BatchSource", "Objective", "ParallelConfig", "TrainConfig", "Trainer", "resume_from"]


class BatchSource(Protocol):
    def next(self, rank: int, world: int) -> Batch:
        """This rank's part of the next batch."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ObjectiveModule(nn.Module):
    """Runs the objective inside `forward`, so DDP and FSDP2 see one forward per micro-step."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.model, batch)


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, config: TrainConfig, data: Batch | BatchSource,
                 out_dir: Path | None = None, dist_info: DistInfo | None = None, export: Export | None = None,
                 on_step: Callable[[dict], None] | None = None, fill: Fill | None = None,
                 validation: Batch | None = None):
        """`data`: equal-length tensors, batched by row (an `attention_mask` among them counts tokens/s), or a
        `BatchSource` of micro-batches of `batch_size / grad_accum_steps` rows. `on_step` sees every step's
        record (skipped steps too) before any checkpoint of that step is written. A `model` built by
        `build_empty` gets its storage on the device and its weights from `fill` once the backend has wrapped
        (under FSDP2: sharded) it, so no rank ever holds more than its share. `validation`: held-out rows (the
        form of `data`) scored every `validate_every` steps and at the end (`validate`)."""
        self.config = config
        self.out_dir = out_dir
        self.dist = dist_info or DistInfo(0, 1, next(model.parameters()).device)
        if self.dist.device.type == "meta":
            raise VlstackError("a model built by build_empty needs the Trainer's dist_info to say its device")
        self.export = export
        self.on_step = on_step
        self.model = model
        if config.batch_size % (self.dist.world * config.grad_accum_steps):
            raise VlstackError(f"train.batch_size {config.batch_size} must divide evenly into "
                               f"{self.dist.world} rank(s) x {config.grad_accum_steps} accumulation step(s)")
        self.data: BatchSource = (GlobalBatches(data, config.batch_size // config.grad_accum_steps, seed=config.seed)
                                  if isinstance(data, dict) else data)
        self.validation = validation
        if validation is not None and len(next(iter(validation.values()))) < config.batch_size // config.grad_accum_steps:
            raise VlstackError(f"the validation set has fewer rows than one training micro-batch "
                               f"({config.batch_size // config.grad_accum_steps}); give it more")
        if config.keep_best and (validation is None or not config.parallel.native):
            raise ConfigError("train.keep_best needs validation rows, and a native parallel mode (DeepSpeed keeps "
                              "its own partitioned weights)")
        self._best: tuple[dict[str, torch.Tensor], dict] | None = None
        if config.activation_checkpointing:
            apply_activation_checkpointing(model)
        if config.compile:
            compile_blocks(model)
        self.backend = build_backend(ObjectiveModule(model, objective), model, config, self.dist, fill)
        self.module, self.optimizer = self.backend.module, self.backend.optimizer
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
        state_logged = False
        try:
            with progress_bar() as progress:
                task = progress.add_task(description, total=cfg.steps, completed=self.step, status="")
                while self.step < cfg.steps:
                    record = self.train_step()
                    log_now = record["skipped"] or self.step % cfg.log_every == 0 or self.step == cfg.steps
                    if log_now or self.on_step is not None:
                        record = self.readable(record)
                    for report in getattr(self.data, "finished_epochs", list)():
                        skipped = sum_over_ranks(report["skipped_by_reason"])
                        self._log({"step": self.step, "event": "epoch", **report, "skipped_by_reason": skipped,
                                   "trained": report["samples"] - sum(skipped.values())})
                    if self.on_step is not None:
                        self.on_step(dict(record))
                    if not record["skipped"] and not state_logged:  # the optimizer's state exists from now on
                        self._log({"step": self.step, "event": "state_bytes", **self.state_bytes()}, history=False)
                        state_logged = True
                    skips_in_a_row = skips_in_a_row + 1 if record["skipped"] else 0
                    if skips_in_a_row > cfg.max_skips_in_a_row:
                        raise VlstackError(
                            f"{skips_in_a_row} steps in a row had a {record['reason']} at step {self.step}: the run "
                            "has diverged or the data is broken; lower train.lr or check the batches")
                    window_samples += record.pop("samples")
                    window_tokens += record.pop("tokens")
                    window_steps += not record["skipped"]
                    if log_now:
                        seconds = time.perf_counter() - window_start
                        record["samples_per_s"] = round(window_samples / seconds, 2)
                        record["tokens_per_s"] = round(window_tokens / seconds, 1)
                        if self._flops_per_step and self._peak_flops:
                            achieved = self._flops_per_step * window_steps / seconds
                            record["flops_per_s"] = round(achieved / self.dist.world)  # per device
                            record["mfu"] = round(achieved / (self._peak_flops * self.dist.world), 4)
                        window_start, window_samples, window_tokens, window_steps = time.perf_counter(), 0, 0, 0
                        self._log(record)
                        mfu = f" MFU {record['mfu']:.1%}" if "mfu" in record else ""
                        progress.update(task, status=f"loss {record['loss']:.4f} {record['samples_per_s']:.0f} "
                                                     f"samples/s {record['tokens_per_s']:.0f} tok/s{mfu}")
                    progress.update(task, completed=self.step)
                    if cfg.save_every and self.step % cfg.save_every == 0 and not record["skipped"]:
                        self.save_checkpoint()
                    if self._validation_due(record):
                        self.validate()
                    if not all_ranks_agree(not self._stop_requested, self.dist.device):
                        self._log({"step": self.step, "event": "SIGTERM: checkpoint written, stopping"})
                        break
            if self.step >= cfg.steps and self._best is not None:
                self._end_on_best()
            if self.out_dir is not None:
                self.save_checkpoint()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self._tensorboard is not None:
                self._tensorboard.close()
        self.module.eval()
        return self.history

    # --- validation -----------------------------------------------------------------------

    def _validation_due(self, record: dict) -> bool:
        every = self.config.validate_every
        return (self.validation is not None and not record["skipped"]
                and (bool(every) and self.step % every == 0 or self.step == self.config.steps))

    @torch.no_grad()
    def score(self, rows: Batch) -> dict:
        """The objective's loss and metrics on `rows` (the form of `data`), without training: global batches of
        the training micro-batch split over the ranks as training splits them (a remainder short of one batch is
        left out). Every rank calls it alike."""
        cfg, rank, world = self.config, self.dist.rank, self.dist.world
        per = cfg.batch_size // cfg.grad_accum_steps
        batches = len(next(iter(rows.values()))) // per
        torch.manual_seed(cfg.seed)  # an objective that draws (MLM masks) scores the same draws every time
        self.module.eval()
        losses, sums = [], {}
        for start in range(0, batches * per, per):
            local = slice(start + rank * per // world, start + (rank + 1) * per // world)
            batch = {k: v[local].to(self.dist.device, non_blocking=True) for k, v in rows.items()}
            with torch.autocast(self.dist.device.type, dtype=_autocast_dtype(cfg.precision),
                                enabled=cfg.precision != "fp32"):
                loss, metrics = self.module(batch)
            losses.append(loss.detach().float())
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value / batches
        self.module.train()
        return self.readable({"loss": torch.stack(losses).mean(), **sums})

    def validate(self) -> dict:
        """`score` the held-out `validation` rows, logged as a `validation` line; with `keep_best`, the weights of
        the lowest loss so far are kept (each rank its own shards, in CPU memory)."""
        record = {"step": self.step, "event": "validation", **self.score(self.validation)}
        self._log(record)
        if self.config.keep_best and (self._best is None or record["loss"] < self._best[1]["loss"]):
            self._best = ({name: local_rows(p)[0].detach().to("cpu", copy=True)
                           for name, p in self.model.named_parameters()}, record)
        return record

    def _end_on_best(self) -> None:
        """Put back the weights of the best validation step (`keep_best`) before the final checkpoint."""
        weights, record = self._best
        if record["step"] != self.step:
            with torch.no_grad():
                for name, param in self.model.named_parameters():
                    local_rows(param)[0].copy_(weights[name])
        self._log({"step": self.step, "event": "best", "best_step": record["step"], "validation_loss": record["loss"]})

    def train_step(self) -> dict:
        """One optimizer step over `grad_accum_steps` micro-batches. The loss and the metrics stay on the device
        (`readable` reads them, at log steps); the step reads the device once, for the one decision every rank
        must take alike: whether its gradient is finite (and so applied)."""
        cfg = self.config
        torch.manual_seed(((cfg.seed * 1_000_003) + self.step) * 1_009 + self.dist.rank)
        self.backend.zero_grad()
        losses, sums, samples, tokens = [], {}, 0, 0
        for micro in range(cfg.grad_accum_steps):
            host = self.data.next(self.dist.rank, self.dist.world)
            if not all_ranks_agree(bool(host), self.dist.device):
                return self._skip(float("nan"), "empty batch (every sample of it was skipped)")
            samples += _rows(host) * self.dist.world  # counted on the host: no read of the device
            tokens += _tokens(host) * self.dist.world
            batch = {k: v.to(self.dist.device, non_blocking=True) for k, v in host.items()}
            with torch.autocast(self.dist.device.type, dtype=_autocast_dtype(cfg.precision),
                                enabled=cfg.precision != "fp32"):
                loss, metrics = self.module(batch)
            self.backend.backward(loss, last=micro == cfg.grad_accum_steps - 1)
            losses.append(loss.detach().float())
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value / cfg.grad_accum_steps
        applied, grad_norm = self.backend.step()
        loss = torch.stack(losses).mean()
        if not applied:
            finite = all_ranks_agree(bool(torch.isfinite(loss)), self.dist.device)
            return self._skip(loss.item(), "non-finite gradient" if finite else "non-finite loss", grad_norm)
        self.step += 1
        record = {"step": self.step, "loss": loss, "lr": self.backend.last_lr(), "grad_norm": grad_norm, **sums}
        return {**record, "skipped": False, "samples": samples, "tokens": tokens}

    def state_bytes(self) -> dict[str, int]:
        """The bytes of parameters and of optimizer state this rank holds (under ZeRO-3, its shards)."""
        parameters = local_bytes(self.module)
        return {"parameter_bytes": parameters, "optimizer_bytes": local_bytes(self.module, self.optimizer) - parameters}

    def readable(self, record: dict) -> dict:
        """`record` with its device values (the loss, the objective's metrics) read in one transfer and averaged
        over the ranks in one all-reduce. Every rank calls it alike."""
        names = [k for k, v in record.items() if isinstance(v, torch.Tensor)]
        if not names:
            return record
        values = torch.stack([record[k].detach().float().reshape(()) for k in names]).tolist()
        return {**record, **mean_over_ranks(dict(zip(names, values)), self.dist.device)}

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
            self.backend.rehearsal_backward(loss)

        _, flops = count_flops(forward_backward)
        self.backend.zero_grad()
        return flops * self.config.grad_accum_steps * self.dist.world

    def _skip(self, loss: float, reason: str, grad_norm: float | None = None) -> dict:
        """Drop the step without touching the weights; the step counter does not advance."""
        self.backend.zero_grad()
        return {"step": self.step + 1, "loss": loss, "grad_norm": grad_norm, "skipped": True, "reason": reason,
                "samples": 0, "tokens": 0}

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def _log(self, record: dict, history: bool = True) -> None:
        """Append `record` to train_log.jsonl (and TensorBoard), and with `history` to what `fit` returns."""
        if history:
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

    def save_checkpoint(self) -> Path:
        """Write the resumable state (the backend's folder, trainer_state.json, the data source's tensors,
        a signature) and the inference files into a temporary directory, then make it the checkpoint in one
        rename (`checkpoint.commit_directory`): a run killed at any point keeps a whole checkpoint."""
        target = self.checkpoint_dir
        tmp = target.with_name(f".{target.name}.tmp-step{self.step}")
        state_dir = self.backend.state_dir
        if self.dist.is_main:
            recover_directory(target)  # what an earlier, killed save left
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        full = self.backend.save(tmp / state_dir, full_weights=self.dist.is_main and self.export is not None)
        data_state = self.data.state_dict()  # on every rank: a stream gathers its ranks' skip counts
        if self.dist.is_main:
            try:
                write_json(tmp / STATE_FILE, self._trainer_state(data_state))
                tensors = getattr(self.data, "tensor_state", dict)()
                if tensors:
                    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / DATA_TENSORS))
                if self.export is not None:
                    self.export(tmp, {k.removeprefix("model."): v for k, v in full.items()})
                sign_training_state(tmp)
                commit_directory(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        barrier()
        return target

    def _trainer_state(self, data_state: dict[str, Any]) -> dict:
        return {
            "step": self.step,
            "data": data_state,
            **self.backend.state_dict(),
            "world_size": self.dist.world,
            "config": to_dict(self.config),
        }

    def resume(self, directory: str | Path, trust: bool = False) -> None:
        """Restore weights, optimizer, schedule, loss scale and data position from a checkpoint.

        The training state is pickled (DCP's metadata, DeepSpeed's files): loading it runs code its author
        chose. A checkpoint this user's runs wrote carries their signature and loads; any other needs
        `trust=True` (the CLI's --trust-checkpoint), with a warning."""
        directory = Path(directory)
        if self.dist.is_main:
            recover_directory(directory)  # a save killed between its renames
        barrier()
        state_file = directory / STATE_FILE
        state_dir = self.backend.state_dir
        if not state_file.is_file() or not (directory / state_dir).is_dir():
            raise CheckpointError(f"{directory} holds no training state ({STATE_FILE} and {state_dir}/); pass the "
                                  "`checkpoint` directory of an earlier run's out_dir (DeepSpeed runs keep theirs in "
                                  "deepspeed/, the other modes in dcp/)")
        check_signature(directory, trust)
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{state_file} is corrupt ({exc}); resume from an intact checkpoint") from exc
        self.backend.load(directory / state_dir, state["world_size"])
        self.step = state["step"]
        self.data.load_state_dict(state["data"])
        if (directory / DATA_TENSORS).is_file():
            self.data.load_tensor_state(load_file(str(directory / DATA_TENSORS)))
        self.backend.load_state_dict(state)


def resume_from(trainer: Trainer, resume: bool, trust: bool = False) -> None:
    """`trainer.resume` from its own checkpoint when `resume` is set and an earlier run left one (every rank
    calls it; rank 0 first puts back what a killed save left)."""
    if not resume:
        return
    with main_rank_first():
        found = recover_directory(trainer.checkpoint_dir) is not None
    if found and (trainer.checkpoint_dir / STATE_FILE).is_file():
        trainer.resume(trainer.checkpoint_dir, trust)


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
