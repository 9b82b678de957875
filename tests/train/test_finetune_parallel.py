"""`vlstack finetune` under torchrun: 2 gloo ranks (DDP and FSDP2) follow the one-process loss curve, and an
FSDP2 run killed with SIGKILL on both ranks resumes exactly."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from vlstack.synthetic.instructions import write_instructions
from vlstack.train.finetune import MODEL_DIR

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12


def _command(recipe: Path, mode: str, out: Path, *extra: str) -> list[str]:
    ranks = 1 if mode == "single" else 2
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={ranks}"]
    return [*launcher, "-m", "vlstack.cli", "finetune", "--config", str(recipe), "--set", f"train.parallel.mode={mode}",
            "--set", f"out_dir={out}", *extra]


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "01-general" / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and not r.get("skipped")}


@pytest.mark.slow
def test_finetune_on_two_ranks_matches_one_process_and_resumes_after_sigkill(tmp_path):
    data = tmp_path / "vqa"
    write_instructions(data, "shapes_vqa", 48)
    recipe = {"base": None, "model": yaml.safe_load((ROOT / "configs" / "nano.yaml").read_text())["model"],
              "max_length": 128, "eval": {"every_stage": False},
              "stages": [{"name": "general", "steps": STEPS, "batch_size": 8, "lr": 3e-3,
                          "datasets": [{"name": "shapes_vqa", "path": str(data)}]}],
              "train": {"precision": "fp32", "log_every": 1, "measure_mfu": False, "tensorboard": False,
                        "warmup_steps": 1}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(recipe))
    losses = {}
    for mode in ("single", "ddp"):
        done = subprocess.run(_command(tmp_path / "ft.yaml", mode, tmp_path / mode), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        losses[mode] = _losses(tmp_path / mode)
        assert (tmp_path / mode / "01-general" / MODEL_DIR / "model.safetensors").is_file()
    assert sorted(losses["single"]) == list(range(1, STEPS + 1))

    # FSDP2, both ranks killed at once (a lost node) after a checkpoint, then resumed
    out = tmp_path / "fsdp2"
    killed = subprocess.Popen(_command(tmp_path / "ft.yaml", "fsdp2", out, "--set", "train.save_every=1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "01-general" / "checkpoint" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not (state.is_file() and json.loads(state.read_text())["step"] >= 2):
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    launcher = psutil.Process(killed.pid)
    for process in [*launcher.children(recursive=True), launcher]:  # the ranks and torchrun, at once
        process.send_signal(signal.SIGKILL)
    killed.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at < STEPS
    done = subprocess.run([*_command(tmp_path / "ft.yaml", "fsdp2", out), "--resume"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    losses["fsdp2"] = _losses(out)
    assert json.loads((out / "01-general" / "stage.json").read_text())["resumed_at_step"] == killed_at

    # the SFT loss is a mean over the global batch's tokens, so the ranks' shares add up to it
    for mode in ("ddp", "fsdp2"):
        steps = sorted(losses[mode])
        assert steps[-1] == STEPS
        assert [losses[mode][s] for s in steps] == pytest.approx([losses["single"][s] for s in steps], rel=1e-5), mode
