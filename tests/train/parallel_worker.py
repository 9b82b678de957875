"""Run under torchrun by test_parallel.py: a few ITC steps of the nano model in one parallel mode, the model
built whole, or (`empty`) on the meta device and initialised by the Trainer once sharded.

Writes the per-step losses and the parameter + optimizer bytes held by rank 0 as JSON.
"""

from __future__ import annotations

import json
import sys

import torch

from vlstack.models.config import ModelConfig
from vlstack.models.initialize import build_empty, init_weights
from vlstack.models.vlm import QwenImageModel
from vlstack.train.config import ParallelConfig
from vlstack.train.distributed import init_distributed, local_bytes
from vlstack.train.objectives import itc_objective
from vlstack.train.trainer import TrainConfig, Trainer


def main(mode: str, out: str, build: str) -> None:
    info = init_distributed(mode)
    config = ModelConfig.from_preset("nano")
    model = build_empty(lambda: QwenImageModel(config)) if build == "empty" else QwenImageModel(config)
    generator = torch.Generator().manual_seed(0)
    n = 64
    data = {
        "pixel_values": torch.randn(n, 3, 32, 32, generator=generator),
        "input_ids": torch.randint(10, 500, (n, 8), generator=generator),
        "attention_mask": torch.ones(n, 8, dtype=torch.long),
    }
    config = TrainConfig(steps=5, batch_size=16, lr=1e-3, warmup_steps=1, precision="fp32", log_every=1,
                         parallel=ParallelConfig(mode=mode))
    trainer = Trainer(model, itc_objective, config, data, dist_info=info, fill=lambda m: init_weights(m, seed=0))
    history = trainer.fit()
    if info.is_main:
        result = {"losses": [r["loss"] for r in history], "bytes": local_bytes(trainer.module, trainer.optimizer)}
        with open(out, "w") as f:
            json.dump(result, f)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
