"""`ingest()`: a corpus in a public format -> vlstack shards, every record kept or rejected with a reason.

The readers of `vlstack.data.sources` do the parsing; this module picks one by
format, writes what it yields as shards (`shard-*.tar` + `manifest.jsonl`, the
input of `vlstack data clean`), and every record it rejects as a line of
`rejected.jsonl`. `ingest.json` sums it up. Images stay encoded: deciding
whether one is usable is the cleaning run's decode stage.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlstack.data import sources
from vlstack.data.schema import Rejected, Sample
from vlstack.data.shards import MANIFEST, ShardWriter
from vlstack.errors import ConfigError
from vlstack.files import rerun_output_dir, write_json
from vlstack.progress import progress_bar

REJECTED = "rejected.jsonl"
SUMMARY = "ingest.json"

FORMATS = {
    "folder": "a folder of images (IN) and a captions file naming them (--captions: JSONL or CSV/TSV with "
              "'image' and 'caption')",
    "coco": "COCO captions JSON (IN), images under --images",
    "llava": "LLaVA instruction data (IN: JSON or JSONL of {id, image, conversations}); text-only records "
             "are kept as text-only conversations",
    "messages": "OpenAI chat data (IN: JSON or JSONL of {messages}), image paths or data URLs",
    "vqav2": "VQAv2 questions JSON (IN) with --annotations, images under --images (--image-pattern)",
    "img2dataset": "img2dataset output (IN: a folder of WebDataset tars or parquet files, or one file)",
    "hf": "a Hugging Face datasets corpus: a save_to_disk folder or parquet files (IN)",
}


@dataclass
class IngestInputs:
    """What a format reads besides IN: each one named only by the formats that use it."""

    images: str | None = None
    """Image root: folder (default IN), coco, vqav2 (required), llava/messages/hf (default IN's folder)."""
    captions: str | None = None
    """folder: the captions file."""
    annotations: str | None = None
    """vqav2: the annotations file."""
    image_pattern: str | None = None
    """vqav2: image file name pattern, e.g. '{image_id:012d}.jpg' (default: COCO's)."""


def read_corpus(fmt: str, source: str | Path, inputs: IngestInputs | None = None) -> Iterator[Sample | Rejected]:
    """The samples and rejections of a corpus in format `fmt`; a missing argument is a ConfigError at once."""
    inputs = inputs or IngestInputs()
    source = Path(source)
    beside = source if source.is_dir() else source.parent
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if fmt == "folder":
        return sources.read_image_folder(inputs.images or source, _required(inputs.captions, "--captions", fmt))
    if fmt == "coco":
        return sources.read_coco_captions(source, _required(inputs.images, "--images", fmt))
    if fmt == "llava":
        return sources.read_llava(source, inputs.images or beside)
    if fmt == "messages":
        return sources.read_messages(source, inputs.images or beside)
    if fmt == "vqav2":
        return sources.read_vqav2(source, _required(inputs.annotations, "--annotations", fmt),
                                  _required(inputs.images, "--images", fmt), inputs.image_pattern)
    if fmt == "img2dataset":
        return sources.read_img2dataset(source)
    return sources.read_hf_dataset(source, inputs.images)


def ingest(fmt: str, source: str | Path, output_dir: str | Path, inputs: IngestInputs | None = None,
           samples_per_shard: int = 1000) -> dict:
    """Read the corpus at `source` in format `fmt` into shards in `output_dir`; returns the summary
    (also written to `ingest.json`). An output folder from an earlier ingest is overwritten; any other
    non-empty folder is refused."""
    inputs = inputs or IngestInputs()
    items = read_corpus(fmt, source, inputs)
    described = {"format": fmt, "input": str(source), **{k: v for k, v in asdict(inputs).items() if v is not None}}
    return write_corpus(items, output_dir, described, samples_per_shard, f"ingest {fmt}")


def write_corpus(items: Iterable[Sample | Rejected], output_dir: str | Path, described: dict[str, Any] | None = None,
                 samples_per_shard: int = 1000, description: str = "ingest") -> dict:
    """Samples to shards, rejections to `rejected.jsonl`, and the summary (with `described`) to `ingest.json`."""
    out = rerun_output_dir(output_dir, SUMMARY, ["shard-*.tar", MANIFEST, REJECTED, SUMMARY], "ingest")
    reasons: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    text_only = 0
    started = time.perf_counter()
    with (
        ShardWriter(out, samples_per_shard) as writer,
        (out / REJECTED).open("w", encoding="utf-8") as rejected,
        progress_bar() as progress,
    ):
        task = progress.add_task(description, total=None)
        for item in items:
            if isinstance(item, Rejected):
                rejected.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
                reasons[item.reason] += 1
            else:
                writer.write(item)
                kinds[item.kind] += 1
                text_only += not item.images
            progress.update(task, advance=1, status=f"kept {sum(kinds.values())}, rejected {sum(reasons.values())}")
    seconds = time.perf_counter() - started
    kept, dropped = sum(kinds.values()), sum(reasons.values())
    summary = {
        **(described or {}), "output": str(out), "total": kept + dropped, "kept": kept, "rejected": dropped,
        "kinds": dict(kinds), "text_only": text_only, "rejected_by_reason": dict(reasons.most_common()),
        "shards": len(writer.shards), "seconds": round(seconds, 2),
        "records_per_second": round((kept + dropped) / seconds, 1) if seconds > 0 else None,
    }
    write_json(out / SUMMARY, summary)
    return summary


def _required(value: str | None, flag: str, fmt: str) -> str:
    if value is None:
        raise ConfigError(f"format {fmt!r} needs {flag}: {FORMATS[fmt]}")
    return value
