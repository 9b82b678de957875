"""Run by test_deepspeed.py: a few ITC steps of the nano model, on one process or under DeepSpeed ZeRO-3.

usage: deepspeed_worker.py single|deepspeed|interrupted|resumed OUT_DIR

- single: one process, the reference curve;
- deepspeed (under torchrun): the same global batch under ZeRO-3; also exports the checkpoint and
  compares it with the weights gathered from the engine's shards;
- interrupted: as `deepspeed`, but rank 0 sends itself SIGTERM during step STOP_AT, so the run
  checkpoints and stops there; resumed: continues that checkpoint to the end.

One row of the data is NaN, so one step is skipped ("non-finite loss") in every run, and the
second of its two micro-batches is the poisoned one: the first one's gradient must be dropped.
Writes OUT_DIR/<phase>.json with the logged records (and, for `deepspeed`, the export check).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from vlstack.checkpoint import load_model, write_model_files
from vlstack.models.config import ModelConfig
from vlstack.models.vlm import QwenImageModel
from vlstack.train.config import ParallelConfig
from vlstack.train.distributed import init_distributed
from vlstack.train.objectives import itc_objective
from vlstack.train.trainer import TrainConfig, Trainer

STEPS = 6
STOP_AT = 3
POISONED_ROW = 7
DEEPSPEED_CONFIG = {  # the rest (batch sizes, lr, betas, clipping, precision) is filled from TrainConfig
    "zero_optimization": {"stage": 3},
    "optimizer": {"type": "AdamW", "params": {"torch_adam": True}},  # torch's AdamW: no C++ op to compile
    "steps_per_print": 1_000_000,
}


def data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    n = 64
    pixels = torch.randn(n, 3, 32, 32, generator=generator)
    pixels[POISONED_ROW] = float("nan")
    return {"pixel_values": pixels, "input_ids": torch.randint(10, 500, (n, 8), generator=generator),
            "attention_mask": torch.ones(n, 8, dtype=torch.long)}


def main(phase: str, out: Path) -> None:
    mode = "single" if phase == "single" else "deepspeed"
    info = init_distributed(mode)
    config_file = out / "ds_config.json"
    if mode == "deepspeed" and info.is_main:
        config_file.write_text(json.dumps(DEEPSPEED_CONFIG))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    torch.manual_seed(0)
    model = QwenImageModel(ModelConfig.from_preset("nano"))
    parallel = ParallelConfig(mode=mode, deepspeed_config=str(config_file) if mode == "deepspeed" else None)
    config = TrainConfig(steps=STEPS, batch_size=16, grad_accum_steps=2, lr=1e-3, warmup_steps=1, precision="fp32",
                         log_every=1, tensorboard=False, parallel=parallel)
    trainer = None

    def objective(model, batch):
        if phase == "interrupted" and info.is_main and trainer.step == STOP_AT - 1 and not trainer._stop_requested:
            signal.raise_signal(signal.SIGTERM)  # the Trainer's handler: finish the step, checkpoint, stop
        return itc_objective(model, batch)

    run_dir = out / ("stopped" if phase in ("interrupted", "resumed") else phase)
    trainer = Trainer(model, objective, config, data(), out_dir=run_dir, dist_info=info,
                      export=lambda directory, state: write_model_files(model, directory, None, state))
    if phase == "resumed":
        trainer.resume(run_dir / "checkpoint")
    history = trainer.fit()
    result = {"records": [{k: r[k] for k in ("step", "loss", "skipped") if k in r} for r in history
                          if "loss" in r], "final_step": trainer.step}
    if phase == "deepspeed":
        result.update(compare_export_with_shards(model, run_dir / "checkpoint", info.is_main))
    if info.is_main:
        (out / f"{phase}.json").write_text(json.dumps(result))


def compare_export_with_shards(model: QwenImageModel, checkpoint: Path, is_main: bool) -> dict:
    """The exported model.safetensors against the engine's own ZeRO-3 parameters, gathered."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        gathered = {name: p.detach().clone() for name, p in model.named_parameters()}
    if not is_main:
        return {}
    exported = load_model(checkpoint).eval()
    reference = QwenImageModel(exported.config).eval()
    reference.load_state_dict(gathered, strict=False)  # lm_head is tied to the embeddings
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(4, 3, 32, 32, generator=generator)
    ids = torch.randint(10, 500, (4, 8), generator=generator)
    mask = torch.ones(4, 8, dtype=torch.long)
    with torch.no_grad():
        a, b = exported(pixels, ids, mask), reference(pixels, ids, mask)
    return {
        "weights_equal": all(torch.equal(p, gathered[name]) for name, p in exported.named_parameters()),
        "names_equal": sorted(n for n, _ in exported.named_parameters()) == sorted(gathered),
        "outputs_equal": all(torch.equal(getattr(a, f), getattr(b, f))
                             for f in ("image_embeds", "text_embeds", "itm_logits")),
    }


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    # DeepSpeed's processes sometimes abort in interpreter teardown (its atexit and thread cleanup on a
    # CPU accelerator) after all work is done; every result is written and flushed above, so leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
