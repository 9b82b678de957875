"""Training throughput of the `small` preset: 1 process vs DDP vs FSDP2 (ZeRO-3) on 2 ranks.

Why: the Trainer's parallel modes must not only be correct (tests/train/test_parallel.py)
but also worth using. This measures samples/s and MFU (against the matmul peak measured
in the same run) of the mixed ITC + ITM + MLM + VTM objective, and the parameter +
optimizer bytes and peak resident memory per rank, which is where ZeRO-3 pays off.

Run: `python benchmarks/train_throughput.py` (a few minutes on 2 CPU cores); it prints a
table and writes JSON to benchmarks/out/train_throughput.json. Each mode runs in its own
processes (`torchrun` for 2 ranks), with the same global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from vlstack.models.config import ModelConfig
from vlstack.models.vlm import QwenImageModel
from vlstack.train.config import ParallelConfig
from vlstack.train.distributed import init_distributed, local_bytes
from vlstack.train.objectives import PretrainLossConfig, PretrainObjective
from vlstack.train.trainer import TrainConfig, Trainer

MODES = (("single", 1), ("ddp", 2), ("fsdp2", 2))


def worker(mode: str, steps: int, batch_size: int, out: str) -> None:
    """One run (this process is one rank): train `steps` steps on random data and report."""
    info = init_distributed(mode)
    torch.manual_seed(0)
    config = ModelConfig.from_preset("small")
    config.image_token_id = 3
    model = QwenImageModel(config)
    n, size, length = batch_size * 4, config.vision.image_size, 32
    generator = torch.Generator().manual_seed(0)
    data = {
        "pixel_values": torch.randn(n, 3, size, size, generator=generator),
        "input_ids": torch.randint(10, config.language.vocab_size, (n, length), generator=generator),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
    }
    objective = PretrainObjective(PretrainLossConfig(), mask_token_id=2, special_token_ids=[0, 1, 2, 3, 4, 5])
    train = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-4, warmup_steps=1, precision="bf16",
                        log_every=max(1, steps // 2), tensorboard=False, parallel=ParallelConfig(mode=mode))
    trainer = Trainer(model, objective, train, data, dist_info=info)
    history = trainer.fit(f"{mode} x{info.world}")
    timed = history[-1]  # the second half of the run: warm-up and FLOP counting excluded
    result = {
        "samples_per_s": timed["samples_per_s"],
        "mfu": timed.get("mfu"),
        "param_and_optimizer_bytes_per_rank": local_bytes(trainer.module, trainer.optimizer),
        "peak_rss_mb_per_rank": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    gathered = [None] * info.world
    if torch.distributed.is_initialized():
        torch.distributed.all_gather_object(gathered, result)
        torch.distributed.destroy_process_group()
    else:
        gathered = [result]
    if info.is_main:
        Path(out).write_text(json.dumps({"mode": mode, "ranks": info.world, "per_rank": gathered}))


def run_mode(mode: str, ranks: int, steps: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        script = [str(Path(__file__).resolve()), "--worker", mode, "--steps", str(steps),
                  "--batch-size", str(batch_size), "--out", str(out)]
        if ranks == 1:
            command = [sys.executable, *script]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                       *script]
        # each rank gets its share of the cores, as it would on a real node
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
        subprocess.run(command, check=True, env=env)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch")
    parser.add_argument("--out", default="benchmarks/out/train_throughput.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.batch_size, args.out)
        return
    runs = [run_mode(mode, ranks, args.steps, args.batch_size) for mode, ranks in MODES]
    baseline = runs[0]["per_rank"][0]
    rows = []
    for run in runs:
        rank0 = run["per_rank"][0]
        rows.append({
            "mode": run["mode"], "ranks": run["ranks"],
            "samples_per_s": rank0["samples_per_s"],
            "speed_vs_single": round(rank0["samples_per_s"] / baseline["samples_per_s"], 3),
            "mfu": rank0["mfu"],
            "param_and_optimizer_mb_per_rank": round(rank0["param_and_optimizer_bytes_per_rank"] / 2**20, 1),
            "peak_rss_mb_per_rank": round(max(r["peak_rss_mb_per_rank"] for r in run["per_rank"]), 1),
        })
    report = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count()},
              "preset": "small", "global_batch": args.batch_size, "steps": args.steps, "precision": "bf16",
              "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'mode':8} {'ranks':>5} {'samples/s':>10} {'vs single':>10} {'MFU':>7} {'param+opt MB':>13} {'peak RSS MB':>12}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['mode']:8} {r['ranks']:>5} {r['samples_per_s']:>10.2f} {r['speed_vs_single']:>10.2f} {mfu:>7} "
              f"{r['param_and_optimizer_mb_per_rank']:>13.1f} {r['peak_rss_mb_per_rank']:>12.1f}")


if __name__ == "__main__":
    main()
