"""Training throughput and MFU of the `small` preset on this machine, fp32 vs bf16.

Why: a samples/s figure alone says little about whether the model code is efficient,
because it depends on the hardware. Dividing the achieved FLOP/s of a real training
step by the matmul peak *measured on the same machine in the same run* gives the model
FLOPs utilisation (MFU), which is comparable across machines and shows how much of the
hardware the model code leaves unused. Doing it for fp32 and for bf16 autocast also
checks that bf16 (the Trainer's default precision) is really the fast path here.

What it does:
1. Measures the matmul peak (GFLOP/s) for fp32 and bf16 with square matmuls, before and
   after the training steps, and keeps the better of the two.
2. Builds the `small` preset and times forward + backward + AdamW step of the
   pretraining path (ITC + ITM + MLM + VTM outputs, all touched by the loss) on random
   data, in fp32 and in bf16 autocast.
3. Counts the FLOPs of one training step (`torch.utils.flop_counter.FlopCounterMode`,
   through `vlstack.train.flops`, as the Trainer's logged MFU does) and reports
   MFU = (FLOPs per step / seconds per step) / peak of the same precision.

Run: `python benchmarks/model_flops.py` (about 70 s on 2 otherwise idle CPU cores);
it prints a summary and writes JSON to `benchmarks/out/model_flops.json`. Other work
on the same cores slows every figure, so the 1-minute load average is recorded too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlstack.models.config import ModelConfig
from vlstack.models.vlm import QwenImageModel, count_parameters
from vlstack.progress import progress_bar
from vlstack.train.flops import count_flops, matmul_peak
from vlstack.train.losses import itc_loss
from vlstack.train.optim import parameter_groups

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
Batch = dict[str, torch.Tensor]


# --- matmul peak ------------------------------------------------------------------------


def measure_peak(dtype: torch.dtype, sizes: list[int], repeats: int) -> dict:
    """The matmul peak for `dtype` in GFLOP/s (the Trainer's own MFU uses the same function)."""
    best, by_size = matmul_peak(dtype, torch.device("cpu"), sizes=tuple(sizes), repeats=repeats)
    by_size_gflops = {size: round(flops / 1e9, 1) for size, flops in by_size.items()}
    return {"gflops": round(best / 1e9, 1), "best_size": max(by_size, key=by_size.get),
            "gflops_by_size": by_size_gflops}


def best_peak(before: dict, after: dict) -> dict:
    """Peak = the better of the measurements before and after training.

    A peak is a best case, so a measurement slowed by other work on the cores must not
    stand (it would push MFU above 100%); both raw measurements are kept in the report.
    """
    best = max(before, after, key=lambda peak: peak["gflops"])
    return {"gflops": best["gflops"], "best_size": best["best_size"], "before_training": before,
            "after_training": after}


# --- one training step ------------------------------------------------------------------


def random_batch(batch_size: int, image_size: int, text_len: int, vocab_size: int) -> Batch:
    """Random images and token ids; the speed of a step does not depend on the values."""
    input_ids = torch.randint(10, vocab_size, (batch_size, text_len))  # [B, T]
    return {
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size),  # [B, 3, H, W]
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),  # [B, T], no padding
    }


def pretraining_loss(model: QwenImageModel, batch: Batch) -> torch.Tensor:
    """A loss that reaches every output of the full forward, so backward runs through all of it.

    Not the real objectives (no negatives, no masking): the benchmark is about speed.
    """
    out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], fuse=True)
    itc = itc_loss(out.image_embeds, out.text_embeds, model.itc.logit_scale)
    itm = F.cross_entropy(out.itm_logits, torch.ones(out.itm_logits.shape[0], dtype=torch.long))  # all pairs match
    mlm = F.cross_entropy(out.mlm_logits.flatten(0, 1), batch["input_ids"].flatten())  # [B*T, V] vs [B*T]
    vtm = out.vtm_pred.float().pow(2).mean()
    return itc + itm + mlm + vtm


def train_step(model: QwenImageModel, optimizer: torch.optim.Optimizer, batch: Batch, precision: str) -> float:
    """Forward + backward + AdamW step: the core of a Trainer step (autocast only for bf16)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = pretraining_loss(model, batch)
    loss.backward()
    optimizer.step()
    return loss.item()


def benchmark_precision(model: QwenImageModel, batch: Batch, precision: str, warmup: int, steps: int,
                        lr: float = 1e-4) -> dict:
    """FLOPs per step and timed steps for one precision; the first warm-up step counts the FLOPs."""
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=lr, betas=(0.9, 0.98))
    step_seconds: list[float] = []
    with progress_bar() as progress:
        task = progress.add_task(f"{precision} train steps", total=warmup + steps, status="counting FLOPs")
        # forward + backward; the optimizer's element-wise ops count 0. (Only the total: the
        # counter's per-module split misattributes backward FLOPs.)
        _, flops = count_flops(lambda: train_step(model, optimizer, batch, precision))
        progress.update(task, advance=1, status="warm-up")
        for _ in range(warmup - 1):
            train_step(model, optimizer, batch, precision)
            progress.update(task, advance=1)
        for _ in range(steps):
            start = time.perf_counter()
            loss = train_step(model, optimizer, batch, precision)
            step_seconds.append(time.perf_counter() - start)
            progress.update(task, advance=1, status=f"{step_seconds[-1]:.1f} s")
    seconds = statistics.median(step_seconds)
    return {
        "flops_per_step": flops,
        "seconds_per_step": round(seconds, 4),
        "step_seconds": [round(s, 4) for s in step_seconds],
        "samples_per_s": round(batch["input_ids"].shape[0] / seconds, 3),
        "achieved_gflops": round(flops / seconds / 1e9, 1),
        "last_loss": round(loss, 4),
    }


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="model preset (default: small)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=32, help="tokens per text")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per precision")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per precision (>= 1; the first one counts the FLOPs)")
    parser.add_argument("--matmul-sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "model_flops.json")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {threads} threads, {platform.machine()}, 1-min load average "
          f"{load_before:.2f} (other work on these cores slows every figure below)")

    def measure_peaks() -> dict[str, dict]:
        return {precision: measure_peak(dtype, args.matmul_sizes, args.matmul_repeats)
                for precision, dtype in PRECISIONS.items()}

    peaks_before = measure_peaks()

    config = ModelConfig.from_preset(args.preset)
    parameters = count_parameters(config)
    print(f"{args.preset} parameters: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in parameters.items()))
    model = QwenImageModel(config).train()
    batch = random_batch(args.batch_size, config.vision.image_size, args.text_len, config.language.vocab_size)
    results = {precision: benchmark_precision(model, batch, precision, args.warmup, args.steps)
               for precision in PRECISIONS}

    peaks_after = measure_peaks()
    peaks = {precision: best_peak(peaks_before[precision], peaks_after[precision]) for precision in PRECISIONS}
    for precision, result in results.items():
        peak = peaks[precision]
        result["mfu"] = round(result["achieved_gflops"] / peak["gflops"], 4)
        print(f"{precision}: matmul peak {peak['gflops']:.1f} GFLOP/s ({peak['best_size']}^2; before / after "
              f"training {peak['before_training']['gflops']:.1f} / {peak['after_training']['gflops']:.1f})")
        print(f"{precision}: {result['flops_per_step'] / 1e9:.1f} GFLOP/step, {result['seconds_per_step']:.2f} s/step, "
              f"{result['samples_per_s']:.2f} samples/s, {result['achieved_gflops']:.1f} GFLOP/s, "
              f"MFU {result['mfu']:.1%}")
        if result["mfu"] > 1:
            print(f"warning: {precision} MFU above 100%: the peak was measured while other work shared the cores")

    speedup = results["fp32"]["seconds_per_step"] / results["bf16"]["seconds_per_step"]
    peak_ratio = peaks["bf16"]["gflops"] / peaks["fp32"]["gflops"]
    print(f"bf16 / fp32 training speed: {speedup:.2f}x (matmul peak ratio {peak_ratio:.2f}x)")

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": threads,
            "load_avg_1min_before": round(load_before, 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2),
        },
        "settings": {
            "preset": args.preset, "batch_size": args.batch_size, "image_size": config.vision.image_size,
            "text_len": args.text_len, "warmup": args.warmup, "steps": args.steps, "seed": args.seed,
        },
        "matmul_peak": peaks,
        "parameters": parameters,
        "train": results,
        "bf16_speedup_over_fp32": round(speedup, 3),
        "bf16_matmul_peak_ratio": round(peak_ratio, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
