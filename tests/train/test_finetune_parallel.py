"""`vlstack finetune` under torchrun: 2 gloo ranks (DDP and FSDP2) follow the one-process loss curve."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlstack.synthetic.instructions import write_instructions
from vlstack.train.finetune import MODEL_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_finetune_on_two_ranks_matches_one_process(tmp_path):
    data = tmp_path / "vqa"
    write_instructions(data, "shapes_vqa", 32)
    recipe = {"base": None, "model": yaml.safe_load((ROOT / "configs" / "nano.yaml").read_text())["model"],
              "max_length": 128, "eval": {"every_stage": False},
              "stages": [{"name": "general", "steps": 3, "batch_size": 8, "lr": 3e-3,
                          "datasets": [{"name": "shapes_vqa", "path": str(data)}]}],
              "train": {"precision": "fp32", "log_every": 1, "measure_mfu": False, "tensorboard": False,
                        "warmup_steps": 1}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(recipe))
    losses = {}
    for mode, ranks in (("single", 1), ("ddp", 2), ("fsdp2", 2)):
        launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         f"--nproc_per_node={ranks}"]
        out = tmp_path / mode
        done = subprocess.run([*launcher, "-m", "vlstack.cli", "finetune", "--config", str(tmp_path / "ft.yaml"),
                               "--set", f"train.parallel.mode={mode}", "--set", f"out_dir={out}"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        log = (out / "01-general" / "train_log.jsonl").read_text().splitlines()
        losses[mode] = [json.loads(line)["loss"] for line in log if '"loss"' in line]
        assert (out / "01-general" / MODEL_DIR / "model.safetensors").is_file()
    # the SFT loss is a mean over the global batch's tokens, so the ranks' shares add up to it
    assert losses["ddp"] == pytest.approx(losses["single"], rel=1e-5)
    assert losses["fsdp2"] == pytest.approx(losses["single"], rel=1e-5)
