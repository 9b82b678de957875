"""The human side of an eval run: `report.md` and a self-contained `report.html` from `results.json`.

Both are rendered from one list of blocks (headings, paragraphs, tables), so the two
files always say the same thing. Each benchmark gets its numbers beside the article
article's, its question counts (missing, empty and not-asked predictions included, so
a smaller denominator can never hide) and a few example predictions.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTICLE_REFERENCE: dict[str, tuple[str, float]] = {
    "vqav2": ("accuracy", 82.1),
    "gqa": ("accuracy", 78.3),
    "docvqa": ("anls", 86.7),
    "chartqa": ("relaxed_accuracy", 74.2),
    "vqarad": ("bleu_4", 68.9),
    "aokvqa": ("mc_accuracy", 65.3),
}
"""The article's number for each benchmark, with the metric (in percent) it is compared to.
The article does not say whether its A-OKVQA 65.3% is multiple choice or direct answer; it sits
beside multiple choice."""
EXAMPLES = 3
"""Example predictions shown per benchmark."""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


Block = tuple[str, str] | Table
"""("h1" | "h2" | "p", text) or a table."""


def write_reports(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` for `results` (as `run_eval` returns them) into `out_dir`."""
    out = Path(out_dir)
    blocks = report_blocks(results)
    markdown, page = out / "report.md", out / "report.html"
    markdown.write_text(to_markdown(blocks), encoding="utf-8")
    page.write_text(to_html(blocks), encoding="utf-8")
    return markdown, page


def summary(results: dict[str, Any]) -> str:
    """One line per benchmark: headline metric, the article's reference, questions scored."""
    lines = []
    for name, bench in results["benchmarks"].items():
        reference = ARTICLE_REFERENCE.get(name)
        article = f" (article {reference[1]:.1f})" if reference and reference[0] == bench["primary"] else ""
        blind = f", blind {bench['blind']['metrics'][bench['primary']]:.1f}" if "blind" in bench else ""
        lines.append(f"{name}: {bench['primary']} {bench['metrics'][bench['primary']]:.1f}{article}{blind} "
                     f"on {bench['count']} questions, {bench['missing'] + bench['empty']} without an answer")
    if "hallucination" in results:
        h = results["hallucination"]
        pope = ", ".join(f"{setting} {_number(100 * m['accuracy'])}" for setting, m in h["pope"].items())
        chair = h["chair"]
        lines.append(f"hallucination: detector AUROC {_number(100 * h['detector']['auroc'])}, POPE accuracy {pope}, "
                     f"CHAIR_s {_number(100 * chair['chair_s'])}, CHAIR_i {_number(100 * chair['chair_i'])}")
    return "\n".join(lines)


def report_blocks(results: dict[str, Any]) -> list[Block]:
    versions = results["versions"]
    blocks: list[Block] = [
        ("h1", "vlstack evaluation"),
        ("p", (f"Model: {results['model'] or 'an in-memory Engine'}. "
               f"{results['seconds']} s, {results['tokens_per_second']} generated tokens/s; vlstack "
               f"{versions['vlstack']}, torch {versions['torch']}, transformers {versions['transformers']}, "
               f"{versions['machine']}.")),
    ]
    if results["benchmarks"]:
        blocks += [
            ("p", ("Metrics are percentages over every question evaluated; a missing, empty or not-asked "
                   "prediction scores 0 and stays in the denominator. ± is the 95% interval (none for BLEU, "
                   "a corpus score); blind: the same questions with a uniform grey image (`blind: true`); "
                   "refused: the share of replies that are refusals.")),
            Table(["benchmark", "metric", "ours", "blind", "refused", "article", "questions", "missing", "empty",
                   "not asked"],
                  [[name, b["primary"], _with_interval(b["metrics"][b["primary"]], b.get("interval")),
                    _with_interval(b["blind"]["metrics"][b["primary"]], b["blind"]["interval"]) if "blind" in b
                    else "-", _number(100 * b["refused"]) if "refused" in b else "-", _reference(name, b["primary"]),
                    _questions(b), str(b["missing"]), str(b["empty"]), str(b["errors"])]
                   for name, b in results["benchmarks"].items()]),
        ]
    for name, bench in results["benchmarks"].items():
        blocks += _benchmark_blocks(name, bench)
    if "hallucination" in results:
        blocks += hallucination_blocks(results["hallucination"])
    return blocks


def _with_interval(value: float, half_width: float | None) -> str:
    return _number(value) if half_width is None else f"{_number(value)} ± {_number(half_width)}"


def hallucination_blocks(h: dict[str, Any]) -> list[Block]:
    """The hallucination section: detector AUROC and labels, POPE per setting, CHAIR (percentages)."""
    detector, calibration, chair = h["detector"], h["detector"]["calibration"], h["chair"]
    fitted = (f"fitted on {calibration['faithful']} faithful and {calibration['hallucinated']} hallucinated held-out "
              f"entities (target error {_number(100 * calibration['error_rate'])}%)" if calibration["fitted"]
              else "the article's, not fitted for this model")
    languages = detector["languages"]
    first = next(iter(languages))
    counts = [["faithful entities", *map(str, languages[first]["labels"]["faithful"].values())],
              ["hallucinated entities", *map(str, languages[first]["labels"]["hallucinated"].values())],
              ["entities of the model's captions", *map(str, chair["detector_labels"].values())]]
    return [
        ("h2", "hallucination"),
        ("p", (f"Detector: entities of a caption scored with the model's ITC embeddings against every other "
               f"colour / shape in context; thresholds {calibration['low']:.3f} / {calibration['high']:.3f} "
               f"(article 0.15 / 0.3), {fitted}. AUROC of faithful vs hallucinated captions (one object's "
               f"colour or shape swapped for one absent from the image) on {detector['scenes']} test scenes; "
               "chance 50.")),
        Table(["captions", "AUROC", "entity AUROC", *(f"{kind} swaps" for kind in languages[first]["auroc_by_change"])],
              [[lang, _number(100 * d["auroc"]), _number(100 * d["entity_auroc"]),
                *(_number(100 * v) for v in d["auroc_by_change"].values())] for lang, d in languages.items()]),
        Table(["labels", "hallucination", "uncertain", "reliable"], counts),
        Table(["example caption", "true caption", "entities (score, label)"],
              [[e["caption"], e["truth"], "; ".join(f"{x['text']} ({x['score']:.3f}, {x['label']})"
                                                    for x in e["entities"])] for e in detector["examples"]]),
        ("p", "POPE: yes/no questions on objects of synthetic scenes, half of them absent (chance accuracy 50)."),
        Table(["setting", "accuracy", "precision", "recall", "f1", "yes ratio", "questions"],
              [[setting, *(_number(100 * m[k]) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")),
                str(m["questions"])] for setting, m in h["pope"].items()]),
        ("p", (f"CHAIR of the model's captions of {chair['captions']} scenes, beside true captions and captions with "
               "one object swapped, which check the metric."
               + ("" if chair["mentions"] else " The model's captions name no object of the lexicon, so CHAIR has "
                  "nothing to judge (CHAIR_i is 0 by convention); a pretrained-only model does not caption yet."))),
        Table(["captions", "CHAIR_s", "CHAIR_i", "object mentions", "hallucinated"],
              [[name, _number(100 * c["chair_s"]), _number(100 * c["chair_i"]), str(c["mentions"]),
                str(c["hallucinated_mentions"])] for name, c in [("model", chair), *chair["references"].items()]]),
        Table(["model caption", "objects", "mentioned", "hallucinated"],
              [[s["caption"].strip() or "(empty)", ", ".join(s["objects"]), ", ".join(s["mentioned"]) or "–",
                ", ".join(s["hallucinated"]) or "–"] for s in chair["sentences"]]),
    ]


def to_markdown(blocks: list[Block]) -> str:
    lines = []
    for block in blocks:
        if isinstance(block, Table):
            lines += [_md_row(block.header), "|" + "---|" * len(block.header), *map(_md_row, block.rows)]
        else:
            kind, text = block
            lines.append({"h1": "# ", "h2": "## ", "p": ""}[kind] + text)
        lines.append("")
    return "\n".join(lines)


def block_html(block: Block) -> str:
    """One table, heading or paragraph as HTML, its text escaped."""
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.header)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                       for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    kind, text = block
    return f"<{kind}>{html.escape(text)}</{kind}>"


def to_html(blocks: list[Block]) -> str:
    body = [block_html(block) for block in blocks]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>vlstack evaluation</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem}"
            "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;"
            "text-align:left}th{background:#f3f3f3}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _benchmark_blocks(name: str, bench: dict[str, Any]) -> list[Block]:
    primary = bench["primary"]
    metrics = sorted(bench["metrics"], key=lambda metric: metric != primary)
    blocks: list[Block] = [
        ("h2", name),
        ("p", (f"{_questions(bench)} questions from {bench['folder']} in {bench['seconds']} s: "
               f"{bench['count'] - bench['missing'] - bench['empty']} answered, {bench['missing']} missing "
               f"({bench['errors']} not asked), {bench['empty']} empty. Prompt: {bench.get('prompt', '')!r}.")),
        Table(["metric", "ours", "article"],
              [[metric, _number(bench["metrics"][metric]), _reference(name, metric)] for metric in metrics]),
    ]
    if "groups" in bench:
        columns = sorted({key for group in bench["groups"].values() for key in group} - {"count"})
        blocks.append(Table(["group", "questions", *columns],
                            [[group, str(values["count"]), *(_number(values.get(c)) for c in columns)]
                             for group, values in bench["groups"].items()]))
    rows = bench["items"][:EXAMPLES]
    scored = primary if primary in rows[0]["scores"] else next(iter(rows[0]["scores"]))  # BLEU is corpus-level
    blocks.append(Table(["id", "question", "reference", "reply", "answer", scored],
                        [[row["id"], row["question"], " / ".join(dict.fromkeys(row["answers"])),
                          _reply(row), row["prediction"], _number(100.0 * row["scores"][scored])]
                         for row in rows]))
    return blocks


def _reply(row: dict[str, Any]) -> str:
    """What the model said, or why there is nothing to show."""
    return row.get("error") or (row["raw"] or "").strip() or f"({row['status']})"


def _questions(bench: dict[str, Any]) -> str:
    """Questions scored, and of how many in the files when a limit cut them."""
    return str(bench["count"]) if bench["count"] == bench["available"] else f"{bench['count']} of {bench['available']}"


def _reference(name: str, metric: str) -> str:
    reference = ARTICLE_REFERENCE.get(name)
    return _number(reference[1]) if reference and reference[0] == metric else "–"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"
