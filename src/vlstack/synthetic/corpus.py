"""`vlstack data synth`: a synthetic corpus of one kind, with injected defects, written as shards.

The output directory holds the shards and `manifest.jsonl`, `defects.jsonl` (one
line per spoiled sample: its id, the defect type and where the defect is) and
`synth.json` (the summary returned by `synthesize`). Every sample also carries
its own record in `meta["defects"]` (empty when clean), so a cleaning run can be
scored from the shards alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlstack.data.schema import KINDS, ImageRef, Sample
from vlstack.data.shards import ShardWriter, write_shards
from vlstack.errors import DataError
from vlstack.files import write_json
from vlstack.progress import progress_bar
from vlstack.synthetic.charts import chart_sample
from vlstack.synthetic.defects import DEFECT_TYPES, inject, plan_defects
from vlstack.synthetic.documents import document_sample
from vlstack.synthetic.scenes import (
    Language,
    caption_sample,
    encode_image,
    grounding_sample,
    interleaved_sample,
    shape_scenes,
    split_seed,
    vqa_sample,
)

GENERATORS: dict[str, Callable[..., Sample]] = {
    "caption": caption_sample,
    "interleaved": interleaved_sample,
    "vqa": vqa_sample,
    "document": document_sample,
    "chart": chart_sample,
    "grounding": grounding_sample,
}
DEFAULT_IMAGE_SIZES = {"caption": 64, "interleaved": 64, "vqa": 64, "grounding": 64, "document": 256, "chart": 256}
"""Shape scenes are legible at 64 px; documents and charts need room for text."""


def make_sample(kind: str, seed: int, index: int, lang: Language = "en", image_size: int | None = None) -> Sample:
    """Clean sample `index` of the `kind` corpus drawn with `seed` (a pure function of its arguments)."""
    if kind not in GENERATORS:
        raise DataError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if lang not in ("en", "zh"):
        raise DataError(f"unknown lang {lang!r}; valid: en, zh")
    return GENERATORS[kind](seed, index, lang, image_size or DEFAULT_IMAGE_SIZES[kind])


def synthesize(
    kind: str,
    n: int,
    out: str | Path,
    defects: float = 0.0,
    seed: int = 0,
    lang: Language = "en",
    *,
    split: str = "train",
    image_size: int | None = None,
    samples_per_shard: int = 1000,
    defect_types: tuple[str, ...] = DEFECT_TYPES,
) -> dict[str, Any]:
    """Write `n` samples of `kind` to `out`, a fraction `defects` of them spoiled; returns the summary.

    Held-out data is the same call with `split="val"` or `"test"`: each split has
    its own seed (`split_seed`), so it shares no random draw with training data.
    """
    if n < 1:
        raise DataError(f"n must be at least 1, got {n}")
    started = time.perf_counter()
    corpus_seed = split_seed(seed, split)

    def make(index: int) -> Sample:
        sample = make_sample(kind, corpus_seed, index, lang, image_size)
        sample.meta.update(split=split, defects=[])
        return sample

    make(0)  # fail on a bad kind, lang or missing font before writing anything
    plans = plan_defects(n, defects, corpus_seed, defect_types)
    out = Path(out)
    counts: dict[str, int] = {}
    with (
        ShardWriter(out, samples_per_shard) as writer,
        (out / "defects.jsonl").open("w", encoding="utf-8") as truth,
        progress_bar() as progress,
    ):
        for index in progress.track(range(n), description=f"synth {kind}"):
            sample = make(index)
            if index in plans:
                sample = inject(sample, plans[index], make, corpus_seed)
                for record in sample.meta["defects"]:
                    truth.write(json.dumps({"id": sample.id, **record}, ensure_ascii=False) + "\n")
                    counts[record["type"]] = counts.get(record["type"], 0) + 1
            writer.write(sample)
    summary = {
        "kind": kind, "n": n, "seed": seed, "split": split, "lang": lang, "corpus_seed": corpus_seed,
        "defect_rate": defects, "spoiled": len(plans), "clean": n - len(plans), "defects": dict(sorted(counts.items())),
        "shards": len(writer.shards), "out": str(out), "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out / "synth.json", summary)
    return summary


def write_scenes(out: str | Path, n: int, seed: int, samples_per_shard: int = 1000) -> Path:
    """The plain shape-scene corpus `shape_scenes(n, seed)` (no defects, no split streams) as caption shards:
    the demo's pretraining pairs."""
    samples = (Sample(f"scene-{seed}-{index:06d}", "caption", [ImageRef("png", encode_image(scene.image))],
                      text=scene.caption, meta={"source": "synthetic", "seed": seed, "index": index})
               for index, scene in enumerate(shape_scenes(n, seed=seed)))
    write_shards(samples, out, samples_per_shard)
    return Path(out)
