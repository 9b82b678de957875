"""The DeepSpeed backend (parallel.mode=deepspeed): ZeRO-3 through `deepspeed.initialize`, driven by the
same Trainer loop as the native backend.

The DeepSpeed config (YAML or JSON, like the article's: `configs/deepspeed_zero3.yaml`)
says how to shard and offload; `train.*` says what to optimise. Every setting both can
express (batch size, accumulation, lr, betas, weight decay, clipping, precision, loss
scale) is filled into the DeepSpeed config from `train.*` where the file leaves it out,
and must agree where the file sets it: a disagreement is a ConfigError naming both keys,
never a silent override.

The engine owns backward, loss scaling, clipping and the optimizer step; the Trainer keeps
its loop, its warmup + cosine schedule (handed to the engine as its lr scheduler), its
logging and its skip rule. Training state is written in DeepSpeed's own format into
`deepspeed/` of the checkpoint (torch pickles that only DeepSpeed reads, to resume our own
runs; the same number of ranks is needed to resume), and the fp32 master weights are
consolidated with DeepSpeed's `zero_to_fp32` into the inference `model.safetensors`.

`deepspeed` is an optional extra, imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlstack.collectives import all_ranks_agree
from vlstack.config import read_yaml
from vlstack.errors import CheckpointError, ConfigError, VlstackError
from vlstack.train.config import TrainConfig
from vlstack.train.distributed import DistInfo
from vlstack.train.optim import config_groups, lr_schedule

logger = logging.getLogger(__name__)

DEEPSPEED_DIR = "deepspeed"
"""The training state inside a checkpoint directory (DeepSpeed's layout: `latest`, `state/`)."""
TAG = "state"
ARTICLE_WRAPPER = "deepspeed_config"
"""The article writes its config under this one top-level key; both forms are accepted."""
OFFLOADS = ("offload_optimizer", "offload_param")
CHECKPOINT_WRAPPER = "_checkpoint_wrapped_module."
"""What torch's activation-checkpointing wrapper adds to parameter names (its state_dict drops it)."""


def import_deepspeed():
    """The `deepspeed` module, or an error that names the extra to install."""
    try:
        import deepspeed
    except ImportError as exc:
        raise VlstackError("train.parallel.mode=deepspeed needs DeepSpeed, which is not installed: "
                           "pip install 'vlstack[deepspeed]' (or use train.parallel.mode=fsdp2, "
                           "PyTorch's own ZeRO-3)") from exc
    return deepspeed


def load_deepspeed_config(path: str | Path) -> dict[str, Any]:
    """A DeepSpeed config from a `.json` file or a YAML file."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"DeepSpeed config not found: {path} (train.parallel.deepspeed_config)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
    else:
        data = read_yaml(path)
    if set(data) == {ARTICLE_WRAPPER}:
        data = data[ARTICLE_WRAPPER]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: {ARTICLE_WRAPPER} must hold a mapping, got {type(data).__name__}")
    return data


def deepspeed_settings(config: TrainConfig, world: int) -> dict[str, Any]:
    """The DeepSpeed config of this run: the file's (or a plain ZeRO-3 one), filled from and
    checked against `train.*`; ConfigError on any disagreement, naming both keys."""
    path = config.parallel.deepspeed_config
    ds = copy.deepcopy(load_deepspeed_config(path)) if path else {}
    _agree(ds, "train_batch_size", config.batch_size, "train.batch_size")
    _agree(ds, "gradient_accumulation_steps", config.grad_accum_steps, "train.grad_accum_steps")
    _agree(ds, "train_micro_batch_size_per_gpu", config.batch_size // (world * config.grad_accum_steps),
           f"train.batch_size / ({world} ranks x train.grad_accum_steps)")
    _agree(ds, "gradient_clipping", config.grad_clip, "train.grad_clip")
    _agree(ds, "fp16.enabled", config.precision == "fp16", "train.precision", config.precision)
    _agree(ds, "bf16.enabled", config.precision == "bf16", "train.precision", config.precision)
    if config.precision == "fp16":
        _agree_loss_scale(ds, config.fp16_init_scale)
    optimizer = ds.setdefault("optimizer", {})
    kind = optimizer.setdefault("type", "AdamW")
    if str(kind).lower() != "adamw":
        raise ConfigError(f"the DeepSpeed config's optimizer.type={kind!r}: vlstack trains with AdamW "
                          "(train.lr, train.betas, train.weight_decay); set it to AdamW or drop the optimizer section")
    _agree(ds, "optimizer.params.lr", config.lr, "train.lr")
    _agree(ds, "optimizer.params.betas", list(config.betas), "train.betas", config.betas)
    _agree(ds, "optimizer.params.weight_decay", config.weight_decay, "train.weight_decay")
    if "scheduler" in ds:
        raise ConfigError("the DeepSpeed config's scheduler section conflicts with train.warmup_steps and "
                          "train.min_lr_ratio: vlstack's warmup + cosine schedule drives the engine; drop the section")
    if "activation_checkpointing" in ds and not config.activation_checkpointing:
        raise ConfigError("the DeepSpeed config's activation_checkpointing section disagrees with "
                          "train.activation_checkpointing=false; set --set train.activation_checkpointing=true "
                          "or drop the section")
    ds.setdefault("zero_optimization", {}).setdefault("stage", 3)
    for key in OFFLOADS:
        offload = ds["zero_optimization"].get(key)
        if config.parallel.nvme_path and isinstance(offload, dict) and offload.get("device") == "nvme":
            _agree(ds, f"zero_optimization.{key}.nvme_path", config.parallel.nvme_path, "train.parallel.nvme_path")
    return ds


def build_engine(module: torch.nn.Module, parameters: list[dict], config: TrainConfig, world: int,
                 scheduler: Callable[[torch.optim.Optimizer], Any]):
    """A DeepSpeed engine around `module` (the objective's module); `parameters`: AdamW groups,
    `scheduler`: makes the lr schedule for DeepSpeed's inner optimizer."""
    deepspeed = import_deepspeed()
    settings = deepspeed_settings(config, world)
    _check_precision(config.precision)
    resolve_offload(settings)
    engine, *_ = deepspeed.initialize(model=module, model_parameters=parameters, config=settings,
                                      lr_scheduler=scheduler)
    return engine


def backward_and_step(engine, loss: torch.Tensor, finite: bool, last: bool) -> None:
    """One micro-batch: the engine accumulates its gradient and, on the last one, unscales,
    clips and steps.

    A non-finite loss (on any rank: `finite` is agreed by all) has its backward run on
    `loss * NaN`, which makes every gradient it reaches NaN on every rank, so DeepSpeed's own
    overflow check (reduced over the ranks) drops the whole accumulated step at its boundary and
    clears its gradient buffers: the same skip everywhere, by DeepSpeed's tested path.
    """
    engine.set_gradient_accumulation_boundary(last)
    engine.backward(loss if finite else loss * float("nan"))
    engine.step()
    if last and not engine.was_step_applied():
        _gather_persistent_parameters(engine)


def step_outcome(engine) -> tuple[bool, float]:
    """(was the optimizer step applied, the global gradient norm before clipping)."""
    norm = engine.get_global_grad_norm()
    return engine.was_step_applied(), float("nan") if norm is None else float(norm)


def save_state(engine, directory: Path) -> None:
    """Every rank writes its shard of the training state (weights, optimizer, loss scale)."""
    engine.save_checkpoint(str(directory), tag=TAG)


def load_state(engine, directory: Path, saved_world: int, world: int) -> None:
    """Restore what `save_state` wrote; DeepSpeed's shards only fit the same number of ranks."""
    if saved_world != world:
        raise CheckpointError(f"{directory} was written by {saved_world} DeepSpeed rank(s) and this run has {world}: "
                              "ZeRO-3 shards resume only on the same number of ranks; launch with "
                              f"--nproc_per_node={saved_world}")
    try:  # the schedule's position comes from trainer_state.json, like in the other modes
        loaded, _ = engine.load_checkpoint(str(directory), tag=TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=False)
    except Exception as exc:  # DeepSpeed raises several types for missing or corrupt shards
        raise CheckpointError(f"cannot restore the DeepSpeed training state from {directory}: {exc}") from exc
    if loaded is None:
        raise CheckpointError(f"DeepSpeed found no training state in {directory}; resume from an intact checkpoint")


def consolidated_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The fp32 master weights gathered from the ZeRO shards that `save_state` wrote.

    Names are those of torch's state_dict (without the activation-checkpointing wrapper's
    part); each tensor is copied out of DeepSpeed's flat buffers (safetensors refuses views of
    a larger storage), and tied weights stay one tensor.
    """
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per tensor group
        state = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=TAG)
    copies: dict[int, torch.Tensor] = {}
    return {name.replace(CHECKPOINT_WRAPPER, ""): copies.setdefault(id(tensor), tensor.clone())
            for name, tensor in state.items()}


def resolve_offload(ds: dict) -> None:
    """NVMe offload needs a directory and DeepSpeed's async_io op (libaio); without them the
    state is offloaded to CPU memory instead, with a warning that says what was missing."""
    for key in OFFLOADS:
        offload = ds["zero_optimization"].get(key)
        if not isinstance(offload, dict) or offload.get("device") != "nvme":
            continue
        path = offload.get("nvme_path")
        if not path:
            problem = f"no directory is set (zero_optimization.{key}.nvme_path or train.parallel.nvme_path)"
        elif not Path(path).is_dir():
            problem = f"nvme_path {path} is not a directory"
        elif not _async_io_available():
            problem = "DeepSpeed's async_io op cannot be built here (install libaio: apt install libaio-dev)"
        else:
            continue
        logger.warning("ZeRO-3 %s to NVMe is not possible: %s; offloading to CPU memory instead", key, problem)
        offload["device"] = "cpu"
        offload.pop("nvme_path", None)


# --- internals ---------------------------------------------------------------------------


def _agree(ds: dict, key: str, value: Any, source: str, shown: Any = None) -> None:
    """Fill DeepSpeed setting `key` (dotted) with `value`, or check that the file's value agrees."""
    *parents, leaf = key.split(".")
    node = ds
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"the DeepSpeed config's {part} must be a mapping, got {node!r}")
    if leaf in node and not _same(node[leaf], value):
        raise ConfigError(f"the DeepSpeed config's {key}={node[leaf]!r} disagrees with "
                          f"{source}={value if shown is None else shown!r}; make them equal, or drop {key} from "
                          "the DeepSpeed config so that train.* fills it")
    node[leaf] = value


def _same(theirs: Any, ours: Any) -> bool:
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return theirs is ours
    if isinstance(ours, (list, tuple)):
        return isinstance(theirs, (list, tuple)) and len(theirs) == len(ours) and all(map(_same, theirs, ours))
    try:  # YAML 1.1 reads `1e-4` (no dot) as a string
        return math.isclose(float(theirs), float(ours), rel_tol=1e-9)
    except (TypeError, ValueError):
        return False


def _agree_loss_scale(ds: dict, init_scale: float) -> None:
    """fp16: DeepSpeed's loss_scale 0 is a dynamic scale starting at 2**initial_scale_power (what
    the Trainer's GradScaler does from train.fp16_init_scale); loss_scale > 0 is a fixed scale."""
    fp16 = ds["fp16"]
    if fp16.get("loss_scale", 0) == 0:
        power = math.log2(init_scale)
        if not power.is_integer():
            raise ConfigError(f"train.fp16_init_scale={init_scale} is not a power of two, which DeepSpeed's dynamic "
                              "loss scale (fp16.initial_scale_power) needs")
        fp16["loss_scale"] = 0
        _agree(ds, "fp16.initial_scale_power", int(power), "train.fp16_init_scale", init_scale)
    else:
        _agree(ds, "fp16.loss_scale", init_scale, "train.fp16_init_scale")


def _check_precision(precision: str) -> None:
    """DeepSpeed keeps fp16/bf16 weights on its accelerator; fail early if it cannot (fp16 on CPUs)."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    supported = {"fp16": accelerator.is_fp16_supported, "bf16": accelerator.is_bf16_supported}
    if precision in supported and not supported[precision]():
        raise ConfigError(f"train.precision={precision} is not supported by DeepSpeed on "
                          f"{accelerator.device_name()}; set --set train.precision=bf16 or fp32")


def _async_io_available() -> bool:
    import_deepspeed()
    from deepspeed.ops.op_builder import AsyncIOBuilder

    return bool(AsyncIOBuilder().is_compatible(verbose=False))


def _gather_persistent_parameters(engine) -> None:
    """After a skipped step, gather ZeRO-3's small "persistent" parameters as an applied step does.

    Works around DeepSpeed issue #3599: a skipped step leaves them partitioned, so a parameter
    used outside its module's forward (the ITC temperature) is then fetched on a path that the
    recorded prefetch trace does not hold when that trace was recorded with it gathered (as after
    a resume), and the next backward stops with "tracing error ... expected the next 1
    parameters in the parameter fetch queue".
    """
    persistent = getattr(engine.optimizer, "persistent_parameters", None)  # ZeRO-3 only
    if persistent:
        persistent[0].all_gather(persistent)


class DeepSpeedBackend:
    """The Trainer's backend on a DeepSpeed engine: it owns backward, loss scaling, clipping and the step."""

    state_dir = DEEPSPEED_DIR

    def __init__(self, module: nn.Module, model: nn.Module, config: TrainConfig, dist: DistInfo):
        self.dist = dist
        self.engine = build_engine(module, config_groups(model, config), config, dist.world,
                                   scheduler=lambda optimizer: lr_schedule(optimizer, config))
        self.module, self.optimizer = self.engine, self.engine.optimizer

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # DeepSpeed needs the verdict now (it reads the host each step anyway)
        backward_and_step(self.engine, loss, all_ranks_agree(bool(torch.isfinite(loss)), self.dist.device), last)

    def step(self) -> tuple[bool, float]:
        return step_outcome(self.engine)

    def rehearsal_backward(self, loss: torch.Tensor) -> None:
        self.engine.set_gradient_accumulation_boundary(False)  # accumulate only, never step
        self.engine.backward(loss)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def last_lr(self) -> float:
        return self.engine.lr_scheduler.get_last_lr()[0]

    def save(self, directory: Path, full_weights: bool) -> dict[str, torch.Tensor]:
        save_state(self.engine, directory)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return consolidated_weights(directory) if full_weights else {}

    def load(self, directory: Path, saved_world: int) -> None:
        load_state(self.engine, directory, saved_world, self.dist.world)

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.engine.lr_scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.lr_scheduler.load_state_dict(state["scheduler"])
