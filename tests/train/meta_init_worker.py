"""Run under torchrun by test_meta_init.py: build a preset on the meta device, let the Trainer shard it with
FSDP2 and draw its weights shard by shard, then write what this rank holds and its peak memory as JSON."""

from __future__ import annotations

import json
import resource
import sys

import torch

from vlstack.models.config import ModelConfig
from vlstack.models.initialize import build_empty, init_weights
from vlstack.models.vlm import QwenImageModel
from vlstack.train.config import ParallelConfig
from vlstack.train.distributed import init_distributed, local_bytes
from vlstack.train.objectives import itc_objective
from vlstack.train.trainer import TrainConfig, Trainer


def main(preset: str, out: str) -> None:
    info = init_distributed("fsdp2")
    model = build_empty(lambda: QwenImageModel(ModelConfig.from_preset(preset)))
    config = TrainConfig(steps=0, batch_size=2, precision="fp32", measure_mfu=False, tensorboard=False,
                         parallel=ParallelConfig(mode="fsdp2"))
    data = {"pixel_values": torch.zeros(2, 3, 8, 8)}  # never drawn: steps=0
    trainer = Trainer(model, itc_objective, config, data, dist_info=info, fill=lambda m: init_weights(m, seed=0))
    probe = dict(trainer.module.named_parameters())["model.vision.blocks.0.mlp.fc1.weight"].to_local()
    result = {"bytes": local_bytes(trainer.module), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "probe_std": probe.std().item(), "probe_rows": probe.shape[0]}
    with open(f"{out}.rank{info.rank}", "w") as f:
        json.dump(result, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
