"""`clean()`: shards in, cleaned shards out, and every input id accounted for.

The per-sample stages (`vlstack.data.clean.pipeline.Stages`) run on an executor
(local processes or Ray Data); their outcomes come back in input order and pass
through one ordered step here: repeated ids, then dedup against the samples kept
so far. Kept samples go to the output shards, rejected ones to `rejected.jsonl`
(one line each, with all reason codes, details and the stages' measurements), so
every input id ends up in exactly one of the two. Then `clean.json` (summary and
config) and `report.md` with histograms.
"""

from __future__ import annotations

import json
import time
from itertools import chain
from pathlib import Path

from vlstack.config import save_yaml, to_dict
from vlstack.data.clean.dedup import Deduplicator
from vlstack.data.clean.pipeline import CleanConfig, Outcome, Stages, input_units, read_unit
from vlstack.data.clean.relevance import RelevanceScorer
from vlstack.data.clean.report import Tally, write_report
from vlstack.data.executors import WorkerDied, get_executor
from vlstack.data.schema import Rejected
from vlstack.data.shards import MANIFEST, ShardWriter
from vlstack.errors import ConfigError
from vlstack.files import rerun_output_dir, write_json
from vlstack.progress import progress_bar

REJECTED = "rejected.jsonl"
SUMMARY = "clean.json"
DUPLICATE_ID = "duplicate_id"
"""Reason code of a sample whose id an earlier input already used."""
_OUTPUT_FILES = (MANIFEST, REJECTED, SUMMARY, "clean_config.yaml", "report.md")


def clean(input_dir: str | Path, output_dir: str | Path, config: CleanConfig | None = None,
          executor: str = "local", workers: int | None = None, scorer: RelevanceScorer | None = None) -> dict:
    """Clean the shards in `input_dir` into `output_dir`; returns the summary (also written to `clean.json`).

    `workers` overrides `config.workers`; `scorer` (any object with `score(images, texts)`)
    turns on the relevance stage without a checkpoint on disk.
    """
    cfg = config or CleanConfig()
    workers = cfg.workers if workers is None else workers
    run = get_executor(executor)
    units, problems = input_units(input_dir)
    stages = Stages.build(cfg, scorer)  # config and model errors before anything is written
    out = _prepare_output(Path(input_dir), Path(output_dir))
    expected = [i for unit in units for i in unit.ids or ()]
    tally = Tally(cfg.examples)
    dedup = Deduplicator(cfg.dedup) if cfg.dedup.enabled else None
    seen: set[str] = set()
    started, first, failure = time.perf_counter(), None, None
    with (
        ShardWriter(out, cfg.samples_per_shard) as writer,
        (out / REJECTED).open("w", encoding="utf-8") as rejected,
        progress_bar() as progress,
    ):
        task = progress.add_task(f"clean ({executor}, {workers} worker{'s' * (workers > 1)})",
                                 total=len(expected) or None)
        results = run(units, read_unit, stages, workers=workers, batch_size=cfg.batch_size)
        try:
            for outcome in chain(map(_problem, problems), results):
                first = first or time.perf_counter() - started  # workers start, models load: not throughput
                _ordered_checks(outcome, dedup, seen)
                if outcome.kept:
                    writer.write(outcome.sample)
                else:
                    rejected.write(json.dumps(outcome.rejected_record(), ensure_ascii=False) + "\n")
                tally.add(outcome)
                progress.update(task, advance=1, status=f"kept {tally.kept}, rejected {tally.rejected}")
        except WorkerDied as exc:  # keep what was done: the shards so far, and the summary says what is missing
            failure = exc
    seconds = time.perf_counter() - started
    summary = {
        "input": str(input_dir), "output": str(out), "executor": executor, "workers": workers,
        "complete": failure is None, **({"error": str(failure)} if failure else {}),
        **tally.summary(),
        "unaccounted": sorted(set(expected) - tally.ids),
        "relevance": "off" if stages.scorer is None else type(stages.scorer).__name__,
        "seconds": round(seconds, 2),
        "startup_seconds": round(first or seconds, 2),
        "samples_per_second": round(tally.total / seconds, 1) if seconds > 0 else None,
        "steady_samples_per_second": round((tally.total - 1) / (seconds - first), 1) if first and seconds > first
        else None,
    }
    save_yaml(cfg, out / "clean_config.yaml")
    write_json(out / SUMMARY, {**summary, "config": to_dict(cfg)})
    write_report(out, tally, cfg, summary)
    if failure is not None:
        raise WorkerDied(f"{failure} {len(summary['unaccounted'])} samples are unaccounted for; the "
                         f"{tally.total} done are in {out} (clean.json lists the rest): run again to clean them all")
    return summary


def _problem(rejected: Rejected) -> Outcome:
    outcome = Outcome(rejected.id, rejected.source)
    outcome.drop(rejected.reason, rejected.detail)
    return outcome


def _ordered_checks(outcome: Outcome, dedup: Deduplicator | None, seen: set[str]) -> None:
    """The part of a run that depends on what came before: repeated ids, then duplicates of kept samples."""
    if outcome.kept and outcome.id in seen:
        outcome.drop(DUPLICATE_ID, "an earlier input has this id")
    if outcome.kept and dedup is not None:
        verdict = dedup.check(outcome.id, outcome.fingerprint)
        if not verdict.keep:
            outcome.drop(verdict.reason, verdict.detail)
            outcome.steps["dedup"] = {"duplicate_of": verdict.detail.removeprefix("duplicate of ")}
    if outcome.id is not None:
        seen.add(outcome.id)


def _prepare_output(input_dir: Path, out: Path) -> Path:
    """Create `out`, or clear the outputs of an earlier cleaning run there; refuse any other non-empty folder."""
    if out.resolve() == input_dir.resolve():
        raise ConfigError(f"output directory {out} is the input directory; write the cleaned shards elsewhere")
    return rerun_output_dir(out, SUMMARY, ["shard-*.tar", "*.png", *_OUTPUT_FILES], "cleaning run")
