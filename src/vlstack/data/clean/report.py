"""What a cleaning run did, for people: counts per stage and reason, score histograms, examples.

`Tally` sees every outcome once (kept or rejected) and keeps only counts, scores
and a few examples, so it stays small on any corpus; `write_report` turns it into
`report.md` and one PNG histogram per scored stage, its threshold marked.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vlstack.config import to_dict

if TYPE_CHECKING:  # the pipeline imports this module; these names are for annotations only
    from vlstack.data.clean.pipeline import CleanConfig, Outcome

SCORED = ("blur", "perplexity", "relevance")
"""Stages with a score to histogram."""
STAGES = ("read", "decode", "blur", "perplexity", "relevance", "privacy", "dedup")


def stage_of(reason: str) -> str:
    """The stage a reason code belongs to: `decode.corrupt` -> decode, `blur` -> blur, `bad_json` -> read."""
    head = reason.partition(".")[0]
    return head if head in STAGES else "read"


class Tally:
    """Running counts of a cleaning run."""

    def __init__(self, examples: int = 3):
        self.examples = examples
        self.kept = 0
        self.rejected = 0
        self.ids: set[str] = set()
        self.judged: Counter[str] = Counter()
        """Samples each stage recorded a judgement for."""
        self.reasons: Counter[str] = Counter()
        """Rejected samples carrying each reason (a sample may carry several)."""
        self.primary: Counter[str] = Counter()
        """Rejected samples by their first reason: these add up to `rejected`."""
        self.scores: dict[str, list[float]] = {name: [] for name in SCORED}
        self.redactions: Counter[str] = Counter()
        """Findings of the privacy stage in kept samples, by type (EMAIL, FACE, GPS, ...)."""
        self.reason_examples: dict[str, list[tuple[str | None, str]]] = defaultdict(list)
        self.redaction_examples: list[tuple[str, dict]] = []

    @property
    def total(self) -> int:
        return self.kept + self.rejected

    def add(self, outcome: Outcome) -> None:
        if outcome.id is not None:
            self.ids.add(outcome.id)
        self.judged.update(outcome.steps.keys())
        self.judged["dedup"] += outcome.fingerprint is not None
        for name in SCORED:
            score = outcome.steps.get(name, {}).get("score")
            if score is not None:
                self.scores[name].append(score)
        if outcome.kept:
            self.kept += 1
            self._add_findings(outcome)
            return
        self.rejected += 1
        self.reasons.update(set(outcome.reasons))
        self.primary[outcome.reasons[0]] += 1
        for reason, detail in zip(outcome.reasons, outcome.details):
            if len(self.reason_examples[reason]) < self.examples:
                self.reason_examples[reason].append((outcome.id, detail))

    def _add_findings(self, outcome: Outcome) -> None:
        privacy = outcome.steps.get("privacy", {})
        found = Counter(privacy.get("text", {}))
        for image in privacy.get("images", []):
            found.update(image)
        self.redactions.update(found)
        if found and len(self.redaction_examples) < self.examples:
            self.redaction_examples.append((outcome.id, privacy))

    def summary(self) -> dict[str, Any]:
        flagged: Counter[str] = Counter()
        for reason, count in self.reasons.items():
            flagged[stage_of(reason)] += count
        return {
            "total": self.total,
            "kept": self.kept,
            "rejected": self.rejected,
            "by_stage": {stage: flagged[stage] for stage in STAGES if flagged[stage]},
            "by_reason": dict(self.reasons.most_common()),
            "by_first_reason": dict(self.primary.most_common()),
            "redactions": dict(self.redactions.most_common()),
        }


def write_report(out: Path, tally: Tally, cfg: CleanConfig, summary: dict[str, Any]) -> Path:
    """Write `report.md` and the histograms into `out`; returns the report's path."""
    thresholds = {"blur": cfg.blur.max_score, "perplexity": cfg.perplexity.max_perplexity,
                  "relevance": cfg.relevance.min_score}
    plots = [name for name in SCORED if tally.scores[name]]
    for name in plots:
        _histogram(tally.scores[name], thresholds[name], name, out / f"{name}.png")
    path = out / "report.md"
    path.write_text("\n".join(_markdown(tally, cfg, summary, thresholds, plots)) + "\n", encoding="utf-8")
    return path


_RULES = {
    "blur": "drop a score (1 / (1 + Laplacian variance / {half_variance})) over {max_score}",
    "perplexity": "drop a perplexity over {max_perplexity}",
    "relevance": "drop a scorer cosine under {min_score:.4g}",
    "dedup": "match={match}: pHash Hamming <= {max_hamming}, MinHash Jaccard >= {min_jaccard}",
}


def _markdown(tally: Tally, cfg: CleanConfig, summary: dict, thresholds: dict, plots: list[str]) -> list[str]:
    share = f" ({tally.rejected / tally.total:.1%})" if tally.total else ""
    lines = [
        "# Cleaning report",
        "",
        f"Input `{summary['input']}` → output `{summary['output']}`: {tally.total} samples, "
        f"**{tally.kept} kept**, {tally.rejected} rejected{share}, {len(summary['unaccounted'])} unaccounted.",
        f"Executor `{summary['executor']}` with {summary['workers']} worker(s): {summary['seconds']} s, "
        f"{summary['samples_per_second']} samples/s. Relevance scorer: {summary['relevance']}.",
        "",
        "## Stages",
        "",
        "| stage | judged | flagged | rule |",
        "|---|---:|---:|---|",
    ]
    flagged = summary["by_stage"]
    sections = {"decode": cfg.decode, "blur": cfg.blur, "perplexity": cfg.perplexity, "relevance": cfg.relevance,
                "dedup": cfg.dedup}
    for stage in ("read", "decode", "blur", "perplexity", "relevance", "privacy", "dedup"):
        section = sections.get(stage)
        if section is not None and not getattr(section, "enabled", True):
            rule = "off"
        elif stage == "relevance" and summary["relevance"] == "off":
            rule = "off (no scorer configured)"
        elif stage == "decode":
            rule = (f"pixels <= {cfg.decode.max_pixels:,}, sides >= {cfg.decode.min_side}, "
                    f"aspect <= {cfg.decode.max_aspect_ratio}")
        elif stage == "privacy":
            found = ", ".join(f"{k} {v}" for k, v in tally.redactions.most_common()) or "nothing"
            rule = f"redacted in kept samples: {found} (never a drop)"
        elif stage == "read":
            rule = "unreadable shards, lost ids, bad JSON, missing images, repeated ids"
        else:
            rule = _RULES[stage].format(**to_dict(section))
        judged = tally.total if stage == "read" else tally.judged.get(stage, 0)
        lines.append(f"| {stage} | {judged} | {flagged.get(stage, 0)} | {rule} |")
    lines += ["", "## Rejections by reason", "",
              "A sample can carry several reasons; *first* counts each rejected sample once.", "",
              "| reason | stage | samples | first |", "|---|---|---:|---:|"]
    for reason, count in tally.reasons.most_common():
        lines.append(f"| `{reason}` | {stage_of(reason)} | {count} | {tally.primary.get(reason, 0)} |")
    if plots:
        lines += ["", "## Scores", "", "Every judged sample's score; the dashed line is the threshold.", ""]
        for name in plots:
            values = tally.scores[name]
            lines.append(f"- **{name}** (threshold {thresholds[name]:.4g}): {len(values)} scores, "
                         f"median {_median(values):.3g}")
        lines += [""] + [f"![{name}]({name}.png)" for name in plots]
    lines += ["", "## Examples", ""]
    for reason, examples in sorted(tally.reason_examples.items()):
        lines.append(f"**{reason}**")
        lines += [f"- `{sample_id}`: {detail}" for sample_id, detail in examples]
        lines.append("")
    if tally.redaction_examples:
        lines.append("**kept, with redactions**")
        lines += [f"- `{sample_id}`: {privacy}" for sample_id, privacy in tally.redaction_examples]
        lines.append("")
    lines += ["## Configuration", "", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "```"]
    return lines


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _histogram(values: list[float], threshold: float, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    log = name == "perplexity"  # perplexities span 1 .. 1e8: gibberish is orders of magnitude out
    shown = [math.log10(v) for v in values] if log else values
    ax.hist(shown, bins=40, color="#4c72b0")
    ax.axvline(math.log10(threshold) if log else threshold, color="#c44e52", linestyle="--",
               label=f"threshold {threshold:.4g}")
    ax.set(xlabel=f"log10 {name}" if log else f"{name} score", ylabel="samples", title=f"{name}: {len(values)} scores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
