"""The configs of a training run: optimisation (`TrainConfig`) and how the model is spread over processes
(`ParallelConfig`). Apart from the Trainer so that both backends can read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Fill = Callable[[nn.Module], None]
"""Writes the weights of a model built by `vlstack.models.initialize.build_empty` once it has storage (and,
under FSDP2, is sharded): `init_weights` for a new model, `checkpoint.load_weights` for a saved one."""


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

    @property
    def native(self) -> bool:
        """True for the modes vlstack's own backend runs (single, ddp, fsdp2): a model can be built on the meta
        device and filled shard by shard, and the best step's weights kept. DeepSpeed builds its engine from a
        whole model and keeps its own partitioned weights."""
        return self.mode != "deepspeed"

    @property
    def shards_weights(self) -> bool:
        """True when no rank holds the whole model (ZeRO-3: fsdp2, deepspeed); what is evaluated after training
        is then the checkpoint's consolidated model."""
        return self.mode in ("fsdp2", "deepspeed")


@dataclass
class TrainConfig:
    """Optimisation settings (the article's defaults: AdamW lr 1e-4, betas 0.9/0.98, weight decay 0.01)."""

    steps: int = 1000
    device: str = "auto"
    """Where the model trains: auto (CUDA when a GPU is present, else cpu), cpu, cuda or cuda:N; under torchrun
    each rank takes its LOCAL_RANK GPU."""
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
    """Initial fp16 loss scale (the article's DeepSpeed config uses 1024)."""
    activation_checkpointing: bool = False
    compile: bool = False
    """torch.compile each transformer block (worth it on GPUs for long runs)."""
    seed: int = 0
    log_every: int = 10
    save_every: int = 0
    """Write a resumable checkpoint every n steps (0: only at the end and on SIGTERM)."""
    validate_every: int = 0
    """Score the held-out validation rows (where a command has them: fine-tuning's `validation`) every n steps,
    logged as `validation` lines of train_log.jsonl; 0: only after the last step."""
    keep_best: bool = False
    """End on the weights of the validation step with the lowest loss instead of the last (a resumed run keeps
    the best of the steps since it resumed)."""
    max_skips_in_a_row: int = 20
    """Stop with an error after this many consecutive non-finite steps (the run has diverged)."""
    measure_mfu: bool = True
    """Count the FLOPs of the first step and measure the matmul peak, to log MFU."""
    tensorboard: bool = True
    """Also write the logged metrics as TensorBoard events in OUT_DIR/tensorboard."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
