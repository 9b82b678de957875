"""The data path's speed and memory: the streaming loader against training, flat memory, ingest + clean.

Why: streaming must never be what a training run waits for, and its memory must
not grow with the corpus. Three measurements, each against a baseline of the same run:

1. Loader throughput: pretraining pairs (decode, resize, tokenize, collate) streamed
   from shards of 224 and 384 px images with 0, 1 and 2 DataLoader workers, in
   samples/s, against the samples/s a `small`-preset training step consumes (bf16,
   batch 16, measured here on pre-encoded batches). A ratio above 1: the loader keeps up.
2. Peak memory (RSS of the process tree, workers included) of `vlstack pretrain` on
   the nano preset, 20 steps, on 10,000 and on 100,000 samples: the ratio should stay
   under 1.2 (only the manifests' counts and an epoch order grow: 8 bytes a sample).
3. Ingest + clean per core on real photographs: the `skimage.data` photographs and
   their crops (distinct images) with captions, through `data ingest folder` and
   `data clean` with the defaults on one worker.

Run: `python benchmarks/data_throughput.py` (about 5 minutes on 2 cores, most of it
writing the 100,000-sample corpus). Prints tables and writes benchmarks/out/data_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from vlstack.data.clean.pipeline import CleanConfig
from vlstack.data.clean.run import clean
from vlstack.data.collate import PairCollate, PairEncoder
from vlstack.data.ingest import IngestInputs, ingest
from vlstack.data.stream import StreamConfig, StreamingBatches, StreamSource
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import special_token_ids, train_tokenizer
from vlstack.models.vlm import QwenImageModel
from vlstack.synthetic.corpus import synthesize
from vlstack.synthetic.scenes import caption_sample
from vlstack.train.objectives import PretrainLossConfig, PretrainObjective
from vlstack.train.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def tokenizer_for(size: int):
    texts = [caption_sample(0, i).text for i in range(500)]
    return train_tokenizer(texts, vocab_size=ModelConfig.from_preset("small").language.vocab_size)


def loader_rate(corpus: Path, tokenizer, image_size: int, workers: int, batches: int = 12, batch: int = 16) -> float:
    stream = StreamingBatches([StreamSource(str(corpus))], batch, PairEncoder(tokenizer, image_size, 32),
                              PairCollate(tokenizer.pad_token_id), config=StreamConfig(workers=workers))
    stream.next()  # workers start
    started = time.perf_counter()
    for _ in range(batches):
        stream.next()
    return batches * batch / (time.perf_counter() - started)


def training_rate(tokenizer, corpus: Path, steps: int = 4, batch: int = 16) -> tuple[float, int]:
    """Samples/s of `small` pretraining steps on batches already in memory (what the loader must feed)."""
    config = ModelConfig.from_preset("small")
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(0)
    model = QwenImageModel(config)
    stream = StreamingBatches([StreamSource(str(corpus))], batch, PairEncoder(tokenizer, config.vision.image_size, 32),
                              PairCollate(tokenizer.pad_token_id), config=StreamConfig(workers=0))
    data = stream.next()
    specials = special_token_ids(tokenizer)
    objective = PretrainObjective(PretrainLossConfig(), specials.mask, list(vars(specials).values()))
    trainer = Trainer(model, objective, TrainConfig(steps=steps + 1, batch_size=batch, measure_mfu=False,
                                                    tensorboard=False, warmup_steps=1), data)
    trainer.train_step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps * batch / (time.perf_counter() - started), config.vision.image_size


def peak_rss_of(command: list[str]) -> int:
    """Peak resident bytes of a command's whole process tree, sampled every 50 ms."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if process.returncode != 0:
        raise RuntimeError(process.stderr.read()[-2000:])
    return peak


def pretrain_rss(corpus: Path, test: Path, tokenizer_dir: Path, out: Path) -> int:
    command = [sys.executable, "-m", "vlstack.cli", "pretrain", "--config", str(ROOT / "configs" / "nano.yaml"),
               "--set", f"data.sources=[{{path: {corpus}}}]", "--set", f"data.test={test}",
               "--set", f"tokenizer={tokenizer_dir}", "--set", "train.steps=20", "--set", f"out_dir={out}",
               "--set", "train.measure_mfu=false", "--set", "train.tensorboard=false"]
    return peak_rss_of(command)


def photo_folder(root: Path) -> int:
    """The skimage photographs and 3 x 3 crops of each (distinct images), with captions: a user's folder."""
    import skimage.data
    from PIL import Image

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from clean_quality import PHOTOGRAPHS

    root.mkdir(parents=True)
    lines = ["image,caption"]
    for name in PHOTOGRAPHS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        w, h = image.size
        crops = [image] + [image.crop((x * w // 3, y * h // 3, (x + 1) * w // 3 + w // 6, (y + 1) * h // 3 + h // 6))
                           for y in range(3) for x in range(3)]
        for number, crop in enumerate(crops):
            crop.save(root / f"{name}-{number}.jpg", quality=90)
            lines.append(f"{name}-{number}.jpg,A photograph of the {name.replace('_', ' ')}, part {number}.")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--out", default="benchmarks/out/data_throughput.json")
    args = parser.parse_args()
    report: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = tokenizer_for(224)
        loader = []
        for size in (224, 384):
            corpus = tmp / f"pairs-{size}"
            synthesize("caption", 400, corpus, image_size=size, samples_per_shard=50)
            for workers in (0, 1, 2):
                loader.append({"image_size": size, "workers": workers,
                               "samples_per_s": round(loader_rate(corpus, tokenizer, size, workers), 1)})
        consumed, train_size = training_rate(tokenizer, tmp / "pairs-224")
        for row in loader:
            row["vs_small_training"] = round(row["samples_per_s"] / consumed, 2)
        report["loader"] = {"rows": loader, "small_training_samples_per_s": round(consumed, 2),
                            "small_image_size": train_size}

        photos = photo_folder(tmp / "photos")
        started = time.perf_counter()
        ingested = ingest("folder", tmp / "photos", tmp / "photos-raw", IngestInputs(captions=str(tmp / "photos" /
                                                                                                   "captions.csv")))
        ingest_seconds = time.perf_counter() - started
        cleaned = clean(tmp / "photos-raw", tmp / "photos-clean", CleanConfig(), workers=1)
        report["ingest_clean"] = {
            "photographs": photos, "ingest_records_per_s": round(ingested["total"] / ingest_seconds, 1),
            "clean_samples_per_s_per_core": cleaned["samples_per_second"],
            "clean_steady_samples_per_s_per_core": cleaned["steady_samples_per_second"],
            "kept": cleaned["kept"], "rejected_by_reason": cleaned["by_first_reason"]}

        synthesize("caption", 200, tmp / "test", split="test")
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        memory = {}
        for n in (args.small, args.large):
            synthesize("caption", n, tmp / f"corpus-{n}", samples_per_shard=1000)
            memory[n] = pretrain_rss(tmp / f"corpus-{n}", tmp / "test", tmp / "tokenizer", tmp / f"run-{n}")
        report["pretrain_peak_rss_bytes"] = {str(n): b for n, b in memory.items()}
        report["pretrain_peak_rss_ratio"] = round(memory[args.large] / memory[args.small], 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"small-preset training consumes {report['loader']['small_training_samples_per_s']} samples/s "
          f"({report['loader']['small_image_size']} px, bf16, batch 16)")
    print(f"{'px':>4} {'workers':>7} {'samples/s':>10} {'x training':>11}")
    for row in loader:
        print(f"{row['image_size']:4d} {row['workers']:7d} {row['samples_per_s']:10.1f} {row['vs_small_training']:11.2f}")
    print(f"ingest + clean: {json.dumps(report['ingest_clean'])}")
    print(f"pretraining peak RSS: {args.small:,} samples {memory[args.small] / 2**20:.0f} MiB, {args.large:,} samples "
          f"{memory[args.large] / 2**20:.0f} MiB, ratio {report['pretrain_peak_rss_ratio']}")


if __name__ == "__main__":
    main()
