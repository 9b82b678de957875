"""Score a cleaning run against injected defects: per-defect recall and clean samples wrongly dropped.

A synthetic corpus (`vlstack data synth --defects RATE`) ships `defects.jsonl`,
one line per spoiled sample. A defect counts as caught when the run did what it
should with it:

- drop defects (blur, corrupt or truncated bytes, bombs, gibberish, mismatched
  pairs): rejected with the stage's reason;
- duplicates: the output never holds both the copy and its original (the copy
  is rejected by dedup, or the original was rejected and the copy has nothing
  left to duplicate);
- privacy defects (faces, EXIF GPS, PII in text): the privacy stage found the
  right type, whether the sample was then kept (redacted) or dropped for
  another reason (its findings are in `rejected.jsonl`);
- odd modes (CMYK, 16-bit, alpha): decoded from that mode to RGB rather than
  rejected as broken.

`dropped` also says how many spoiled samples were rejected at all, so a privacy
defect that never reached the output unredacted can be told from one that was fixed.

Clean samples can be dropped rightly too: shape-scene corpora repeat short
captions ("a blue circle in the center") with renders a perceptual hash cannot
tell apart, and the dedup stage drops those as near duplicates by design. A
clean sample dropped as a duplicate of a sample with the same normalised text is
counted as a `natural_duplicate`; every other clean drop is `wrongly_dropped`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from vlstack.data.clean.dedup import normalize_text
from vlstack.data.clean.pipeline import judged_text
from vlstack.data.schema import Sample
from vlstack.data.shards import read_manifest, read_shards
from vlstack.files import write_json

TRUTH = "defects.jsonl"
GROUND_TRUTH = "ground_truth.json"
_DECODE_FAILURES = {"decode.corrupt", "decode.unreadable"}
_DROPS: dict[str, set[str]] = {
    "blur": {"blur"},
    "corrupt_bytes": _DECODE_FAILURES,
    "truncated": _DECODE_FAILURES,
    "bomb": {"decode.too_many_pixels"},
    "gibberish": {"perplexity"},
    "mismatch": {"relevance"},
}
_DUPLICATES = ("duplicate_exact", "duplicate_near")
_FINDINGS: dict[str, tuple[str, str]] = {  # defect -> (where in the privacy step, finding type)
    "face": ("images", "FACE"),
    "exif_gps": ("images", "GPS"),
    "pii_email": ("text", "EMAIL"),
    "pii_phone": ("text", "PHONE"),
    "pii_cn_mobile": ("text", "PHONE"),
    "pii_cn_id": ("text", "ID"),
    "pii_credit_card": ("text", "CARD"),
    "pii_ip": ("text", "IP"),
}


def evaluate(input_dir: str | Path, output_dir: str | Path) -> dict[str, Any] | None:
    """Recall per defect type and the clean samples dropped; None when the input has no `defects.jsonl`."""
    truth_path = Path(input_dir) / TRUTH
    if not truth_path.is_file():
        return None
    truth: dict[str, list[dict]] = defaultdict(list)
    for line in truth_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            truth[record["id"]].append(record)
    fates = _fates(Path(output_dir))
    kept = {i for i, fate in fates.items() if not fate["reasons"]}
    defects: dict[str, Counter[str]] = defaultdict(Counter)
    for sample_id, records in truth.items():
        fate = fates.get(sample_id, {"reasons": ["unaccounted"], "steps": {}})
        for record in records:
            counts = defects[record["type"]]
            counts["injected"] += 1
            counts["caught"] += _caught(record, fate, kept)
            counts["dropped"] += bool(fate["reasons"])
    texts = {s.id: normalize_text(judged_text(s)) for s in read_shards(input_dir) if isinstance(s, Sample)}
    clean_ids = [i for info in read_manifest(input_dir) for i in info.ids if i not in truth]
    natural, wrong = 0, Counter()
    for sample_id in clean_ids:
        fate = fates.get(sample_id, {"reasons": ["unaccounted"], "steps": {}})
        if not fate["reasons"]:
            continue
        original = fate["steps"].get("dedup", {}).get("duplicate_of")
        if original is not None and texts.get(original) == texts.get(sample_id):
            natural += 1
        else:
            wrong[fate["reasons"][0]] += 1
    total = max(1, len(clean_ids))
    return {
        "defects": {
            name: {**counts, "recall": round(counts["caught"] / counts["injected"], 4)}
            for name, counts in sorted(defects.items())
        },
        "clean": {
            "total": len(clean_ids),
            "dropped": natural + sum(wrong.values()),
            "natural_duplicates": natural,
            "wrongly_dropped": sum(wrong.values()),
            "wrongly_dropped_rate": round(sum(wrong.values()) / total, 4),
            "dropped_rate": round((natural + sum(wrong.values())) / total, 4),
            "wrongly_dropped_by_reason": dict(wrong.most_common()),
        },
    }


def _fates(output_dir: Path) -> dict[str, dict]:
    """id -> {"reasons": [...], "steps": {...}} for every kept and rejected sample of a run."""
    fates = {s.id: {"reasons": [], "steps": s.meta.get("clean", {})}
             for s in read_shards(output_dir) if isinstance(s, Sample)}
    with (output_dir / "rejected.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["id"] is not None:
                fates[record["id"]] = {"reasons": record["reasons"], "steps": record["steps"]}
    return fates


def _caught(record: dict, fate: dict, kept: set[str]) -> bool:
    kind = record["type"]
    if kind in _DUPLICATES:
        return bool(fate["reasons"]) or record["of"] not in kept
    if kind in _DROPS:
        return bool(_DROPS[kind] & set(fate["reasons"]))
    if kind in _FINDINGS:
        where, finding = _FINDINGS[kind]
        found = fate["steps"].get("privacy", {}).get(where, {})
        found = [found] if isinstance(found, dict) else found
        return any(f.get(finding, 0) > 0 for f in found)
    images = fate["steps"].get("decode", {}).get("images", [])  # odd modes: decoded from that mode to RGB
    return bool(images) and images[0].get("mode") == record.get("mode") and "size" in images[0]


def score_cleaning(input_dir: str | Path, output_dir: str | Path) -> dict[str, Any] | None:
    """`evaluate` a finished cleaning run, write OUT/ground_truth.json and add a section to OUT/report.md;
    None (and nothing written) when the input has no `defects.jsonl`."""
    truth = evaluate(input_dir, output_dir)
    if truth is not None:
        out = Path(output_dir)
        write_json(out / GROUND_TRUTH, truth)
        with (out / "report.md").open("a", encoding="utf-8") as report:
            report.write("\n".join(_markdown(truth)) + "\n")
    return truth


def _markdown(truth: dict) -> list[str]:
    clean = truth["clean"]
    lines = ["", "## Against the injected defects (defects.jsonl)", "",
             "Caught: dropped by the right stage, or (faces, GPS, PII) found by the privacy stage, or (odd modes) "
             "decoded to RGB; *dropped* counts those rejected for any reason.", "",
             "| defect | injected | caught | recall | dropped |", "|---|---:|---:|---:|---:|"]
    for name, row in truth["defects"].items():
        lines.append(f"| {name} | {row['injected']} | {row['caught']} | {row['recall']:.3f} | {row['dropped']} |")
    wrong = ", ".join(f"{k} {v}" for k, v in clean["wrongly_dropped_by_reason"].items()) or "none"
    lines += ["", f"Clean samples: {clean['total']}; wrongly dropped {clean['wrongly_dropped']} "
                  f"({clean['wrongly_dropped_rate']:.1%}: {wrong}); dropped as natural duplicates (same text, "
                  f"near-identical image) {clean['natural_duplicates']}."]
    return lines
