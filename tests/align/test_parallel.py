"""`vlstack align` under torchrun: reward model, DPO, PPO and GRPO on 2 gloo ranks (DDP and FSDP2) follow the
one-process loss curves with the same global batch (PPO and GRPO sample each rank's share of the prompts)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("parallel_worker.py")


def _losses(directory: Path) -> list[float]:
    records = [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r and not r.get("skipped")]


@pytest.mark.slow
def test_every_method_on_two_ranks_matches_one_process(tmp_path, nano_checkpoint, alignment_data):
    data = alignment_data(16, 4, ["color"])
    losses = {}
    for mode, ranks in (("single", 1), ("ddp", 2), ("fsdp2", 2)):
        launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         f"--nproc_per_node={ranks}"]
        out = tmp_path / mode
        done = subprocess.run([*launcher, str(WORKER), mode, str(nano_checkpoint), data.train, data.held_out, str(out)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        losses[mode] = {method: _losses(out / method) for method in ("reward", "dpo", "ppo", "grpo")}
        for method in ("dpo", "ppo", "grpo"):
            assert json.loads((out / method / "align.json").read_text())["vqa_accuracy_after"] >= 0
    assert [len(v) for v in losses["single"].values()] == [3, 3, 8, 4]
    for mode in ("ddp", "fsdp2"):
        for method, curve in losses["single"].items():
            # a rank scores its rollouts padded to its own longest row, one process to the iteration's: float
            # reordering of ~1e-5 in the PPO / GRPO losses, which pass near 0
            assert losses[mode][method] == pytest.approx(curve, rel=1e-4, abs=2e-4), (mode, method)
