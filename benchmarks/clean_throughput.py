"""Cleaning throughput at 384 px: samples/s per core of the whole chain, local processes vs Ray Data.

Why: the cleaning pipeline must scale out without changing what it keeps. This
runs `vlstack.data.clean.run.clean` on the same synthetic corpus (384 px shape
scenes, a fifth of them spoiled with every defect type, 8 shards) three ways: one
process on one core (the baseline), the local executor with 2 worker processes,
and the Ray Data executor with 2 actors on a local 2-CPU Ray instance, and checks
that all three keep the same ids.

The chain is every stage: decode/validate, blur, n-gram perplexity, relevance
(an untrained `tiny` vlstack checkpoint through its ITC heads: its cost, not its
judgement; the threshold keeps everything), privacy (PII, Haar faces, metadata,
re-encoding) and dedup. Per-core figures divide by the cores in use (1, 2, 2);
"steady" leaves out the start (worker processes or actors importing torch and
loading the models, until the first result), which a long run amortises.

Run: `python benchmarks/clean_throughput.py` (about 4 minutes on 2 cores; needs
`pip install 'ray[data]'`). Prints a table and writes benchmarks/out/clean_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import torch

from vlstack.checkpoint import save_model
from vlstack.data.clean.pipeline import CleanConfig
from vlstack.data.clean.run import REJECTED, clean
from vlstack.data.shards import read_shards
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import special_token_ids, train_tokenizer
from vlstack.models.vlm import QwenImageModel
from vlstack.synthetic.corpus import synthesize

RUNS = (("local", 1), ("local", 2), ("ray", 2))


def scorer_checkpoint(directory: Path, texts: list[str]) -> Path:
    """An untrained `tiny` checkpoint with a tokenizer: the relevance stage's cost without a download."""
    tokenizer = train_tokenizer(texts, vocab_size=ModelConfig.from_preset("tiny").language.vocab_size)
    config = ModelConfig.from_preset("tiny")
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(0)
    save_model(QwenImageModel(config), directory, tokenizer)
    return directory


def kept_ids(out: Path) -> tuple[list[str], list[str]]:
    rejected = [json.loads(line)["id"] for line in (out / REJECTED).read_text().splitlines()]
    return [s.id for s in read_shards(out)], rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1200, help="samples in the corpus")
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--out", default="benchmarks/out/clean_throughput.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize("caption", args.n, tmp / "in", defects=0.2, seed=0, image_size=args.image_size,
                   samples_per_shard=args.n // 8)
        synthesize("caption", 300, tmp / "reference", seed=0, split="val")
        texts = [s.text for s in read_shards(tmp / "reference")]
        cfg = CleanConfig(batch_size=16)
        cfg.perplexity.reference = str(tmp / "reference")
        cfg.relevance.model = str(scorer_checkpoint(tmp / "scorer", texts))
        cfg.relevance.min_score = -1.0  # an untrained scorer: measure its cost, keep everything
        torch.set_num_threads(1)  # the one-process baseline uses one core, like each worker
        cv2.setNumThreads(1)
        rows, ids = [], {}
        for executor, workers in RUNS:
            name = f"{executor}-{workers}"
            started = time.perf_counter()
            if executor == "ray":
                import ray

                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            ray_start = time.perf_counter() - started
            summary = clean(tmp / "in", tmp / name, cfg, executor=executor, workers=workers)
            if executor == "ray":
                ray.shutdown()
            ids[name] = kept_ids(tmp / name)
            rows.append({
                "executor": executor, "workers": workers, "samples": summary["total"], "kept": summary["kept"],
                "load_avg_1min_after": round(os.getloadavg()[0], 2),
                "seconds": summary["seconds"], "startup_seconds": summary["startup_seconds"],
                "samples_per_s": summary["samples_per_second"],
                "samples_per_s_per_core": round(summary["samples_per_second"] / workers, 1),
                "steady_samples_per_s_per_core": round(summary["steady_samples_per_second"] / workers, 1),
                "ray_init_seconds": round(ray_start, 2) if executor == "ray" else None,
            })
    same = all(value == ids["local-1"] for value in ids.values())
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "corpus": {"kind": "caption", "n": args.n, "image_size": args.image_size, "defect_rate": 0.2, "shards": 8},
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "same_kept_ids": same, "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'executor':9} {'workers':>7} {'samples/s':>10} {'per core':>9} {'steady/core':>12} {'startup s':>10} "
          f"{'seconds':>8} {'kept':>6}")
    for r in rows:
        print(f"{r['executor']:9} {r['workers']:>7} {r['samples_per_s']:>10.1f} {r['samples_per_s_per_core']:>9.1f} "
              f"{r['steady_samples_per_s_per_core']:>12.1f} {r['startup_seconds']:>10.2f} {r['seconds']:>8.2f} "
              f"{r['kept']:>6}")
    print(f"same kept ids: {same}; load average {report['load_avg_1min_before']} -> {report['load_avg_1min_after']}")


if __name__ == "__main__":
    main()
