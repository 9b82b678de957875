"""What ZeRO-3 saves per rank, for every training command: 1 process against 2 FSDP2 ranks.

Why: each training command (`pretrain`, `finetune`, and `align` with the reward model, DPO, PPO and
GRPO) runs under torchrun with FSDP2; sharding is only worth it if each rank then holds about half of
the parameters and optimizer state. Every Trainer writes the bytes its rank holds (parameters, and
optimizer state after the first step) as the `state_bytes` line of its train_log.jsonl; this runs each
command through the CLI on 1 process and on 2 gloo ranks (the `small` preset, a few steps, synthetic
data written first) and compares rank 0's bytes.

Run: `python benchmarks/sharding_memory.py` (a few minutes on 2 CPU cores); writes
benchmarks/out/sharding_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = (("single", 1), ("fsdp2", 2))


def cli(ranks: int, *args: str) -> None:
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={ranks}"]
    subprocess.run([*launcher, "-m", "vlstack.cli", *map(str, args)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})


def sets(*pairs: str) -> list[str]:
    return [a for pair in pairs for a in ("--set", pair)]


def state_bytes(log: Path) -> dict[str, int]:
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "state_bytes":
            return {"parameter_bytes": record["parameter_bytes"], "optimizer_bytes": record["optimizer_bytes"]}
    raise SystemExit(f"{log} has no state_bytes line")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="a configs/<preset>.yaml")
    parser.add_argument("--out", default="benchmarks/out/sharding_memory.json")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        cli(1, "data", "synth", "--kind", "caption", "--n", 64, "--out", data / "captions")
        cli(1, "data", "synth", "--kind", "caption", "--n", 16, "--split", "test", "--out", data / "captions-test")
        cli(1, "data", "synth-instructions", "--dataset", "shapes_vqa", "--n", 32, "--out", data / "vqa")
        for split, n in (("train", 16), ("test", 4)):
            cli(1, "data", "synth-instructions", "--dataset", "shapes_vqa", "--rejected", "wrong", "--n", n,
                "--split", split, "--out", data / f"pairs-{split}")
        fast = ("train.precision=fp32", "train.measure_mfu=false", "train.tensorboard=false", "train.log_every=1")
        align_data = (f"data.train={data / 'pairs-train'}", f"data.held_out={data / 'pairs-test'}", "data.eval_items=2")
        rollouts = ("rollout.prompts=4", "rollout.max_new_tokens=4", "rollout.eval_samples=1", "iterations=1",
                    "epochs=1", "train.batch_size=4")
        rows = []
        for mode, ranks in MODES:
            run = Path(tmp) / mode
            parallel = f"train.parallel.mode={mode}"
            cli(ranks, "pretrain", "--config", ROOT / "configs" / f"{args.preset}.yaml",
                *sets(f"data.sources=[{{path: {data / 'captions'}}}]", f"data.test={data / 'captions-test'}",
                      "train.steps=2", "train.batch_size=8", f"out_dir={run / 'pretrain'}", parallel, *fast))
            base = run / "pretrain" / "checkpoint"
            stage = (f"stages=[{{name: general, steps: 2, batch_size: 4, lr: 1.0e-4, datasets: [{{name: vqa, path: "
                     f"{data / 'vqa'}}}]}}]")
            cli(ranks, "finetune", "--config", ROOT / "configs" / "finetune.yaml",
                *sets(f"base={base}", stage, "eval.datasets=[]", "max_length=512", f"out_dir={run / 'finetune'}", parallel,
                      *fast))
            policy = run / "finetune" / "01-general" / "model"
            logs = {"pretrain": run / "pretrain", "finetune": run / "finetune" / "01-general"}
            for method, extra in (("reward", ("train.steps=2", "train.batch_size=4")),
                                  ("dpo", ("train.steps=2", "train.batch_size=4")),
                                  ("ppo", rollouts), ("grpo", (*rollouts, "group_size=2"))):
                cli(ranks, "align", "--method", method,
                    *sets(f"checkpoint={policy}", f"out_dir={run / method}", parallel, *align_data, *fast, *extra))
                logs[method] = run / method
            for command, directory in logs.items():
                rows.append({"command": command, "mode": mode, "ranks": ranks,
                             **state_bytes(directory / "train_log.jsonl")})
    single = {r["command"]: r for r in rows if r["mode"] == "single"}
    for row in rows:
        one = single[row["command"]]
        row["ratio_to_single"] = round((row["parameter_bytes"] + row["optimizer_bytes"])
                                       / (one["parameter_bytes"] + one["optimizer_bytes"]), 3)
    report = {"preset": args.preset, "torch": torch.__version__, "cpus": os.cpu_count(),
              "seconds": round(time.perf_counter() - started, 1), "rank0": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"{'command':10} {'mode':7} {'ranks':>5} {'params MB':>10} {'optimizer MB':>13} {'vs single':>10}")
    for r in rows:
        print(f"{r['command']:10} {r['mode']:7} {r['ranks']:>5} {r['parameter_bytes'] / 2**20:>10.1f} "
              f"{r['optimizer_bytes'] / 2**20:>13.1f} {r['ratio_to_single']:>10.3f}")
    print(f"wrote {out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
