"""benchmarks/gpu_check.sh starts and ends on any machine: its dry run, as CI runs it, fills every figure."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_dry_run_measures_every_part(tmp_path):
    results = tmp_path / "RESULTS.md"
    command = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "check.json"),
               "--results", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["dry_run"] and report["bf16_matmul_peak_tflops"] > 0
    assert all(report["sdpa_kernels"][run] for run in ("pretrain", "sft"))  # the attention ran through SDPA
    for run in ("pretrain", "sft"):
        assert report[run]["tokens_per_s"] > 0 and 0 < report[run]["mfu"] < 1
    assert report["fsdp2_compile"]["max_loss_difference"] == 0.0  # eager twice on the CPU
    assert {(r["name"], r["batch"]) for r in report["generation"]} == {
        (name, batch) for name in ("hf_llava_generate", "engine") for batch in (1, 2)}
    assert "| pretraining" in done.stdout and not results.exists()  # a dry run appends nothing
