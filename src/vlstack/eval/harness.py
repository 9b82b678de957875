"""Evaluate a checkpoint on the benchmarks: load, ask through the Engine, score, write `results.json`.

Every benchmark is loaded before any generation starts, so a missing file fails in
seconds, not after an hour of decoding. Each question goes through the one generation
path (`vlstack.infer.Engine`) with its benchmark's prompt; the raw replies are scored by
the benchmark itself (`Benchmark.score`), which post-processes them and counts missing
and empty ones, so the denominator is always every question evaluated. A question the
model cannot take (a prompt over its context, an unreadable image) gets no prediction
and is listed with its reason: it scores 0, it is never dropped.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from rich.progress import Progress

import vlstack
from vlstack.config import to_dict
from vlstack.errors import ConfigError, DataError, VlstackError
from vlstack.eval.benchmarks import BENCHMARKS, Benchmark, EvalItem, get_benchmark
from vlstack.eval.conversations import is_refusal
from vlstack.eval.hallucination import HallucinationConfig, run_hallucination
from vlstack.eval.report import write_reports
from vlstack.files import write_json
from vlstack.infer.engine import Engine, EngineConfig, EngineStats, Request
from vlstack.progress import progress_bar

ARTICLE_BENCHMARKS = ["vqav2", "gqa", "docvqa", "chartqa", "vqarad", "aokvqa"]
"""The six benchmarks the article reports."""
HALLUCINATION_DIR = "hallucination"
"""The hallucination suite's folder under the data root."""


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(default_factory=lambda: list(ARTICLE_BENCHMARKS))
    """Registered benchmark names (`vlstack.eval.benchmarks.BENCHMARKS`)."""
    data_root: str | None = None
    """A folder holding each benchmark's official files in its own sub-folder (`Benchmark.data_dir`:
    vqav2/, gqa/, ...) and a hallucination suite in hallucination/. `vlstack data synth-eval DIR` writes
    synthetic ones in the same formats."""
    paths: dict[str, str] = field(default_factory=dict)
    """Benchmark name -> its folder, for a benchmark that lives outside `data_root`."""
    limit: int | None = None
    """Evaluate only the first `limit` questions of each benchmark (file order); None: all."""
    batch_size: int = 8
    device: str = "auto"
    """Where the model runs: auto (CUDA when a GPU is present, else cpu), cpu, cuda or cuda:N."""
    max_new_tokens: int = 16
    """Answers are a word or a phrase; the Engine's fast path may lower this for short questions."""
    out_dir: str = "runs/eval"
    seed: int = 0
    """Seeds the sampling of every request (greedy decoding ignores it)."""
    blind: bool = False
    """Also ask every question with a uniform grey image in place of its own: the blind baseline, what the
    question and the model's priors score without seeing anything."""
    templates: dict[str, str] = field(default_factory=dict)
    """Benchmark name -> a prompt replacing its official one (`{question}` and the benchmark's own fields, such as
    A-OKVQA's `{options}`), e.g. `{vqav2: "{question}"}`: what the same questions score asked another way (the
    report names the prompt). Empty: every benchmark's official prompt."""
    hallucination: HallucinationConfig | None = None
    """Also evaluate hallucination (the detector's AUROC, POPE, CHAIR on the suite `hallucination.data`, by
    default DATA_ROOT/hallucination; the detector's calibration is stored in the checkpoint); None: skip it."""

    def __post_init__(self) -> None:
        for name in [*self.benchmarks, *self.paths, *self.templates]:
            get_benchmark(name)  # an unknown name is an error that lists the registered ones
        for name, template in self.templates.items():
            if "{question}" not in template:
                raise ConfigError(f"templates.{name} {template!r} has no {{question}}; the question must be in it")
        stray = sorted(set(self.paths) - set(self.benchmarks))
        if stray:
            raise ConfigError(f"'paths' names {', '.join(stray)}, which 'benchmarks' does not list")
        if not self.benchmarks and self.hallucination is None:
            raise ConfigError(f"no benchmarks chosen and no hallucination evaluation; registered: "
                              f"{', '.join(sorted(BENCHMARKS))}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"'limit' must be at least 1 (or null for every question), got {self.limit}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("'batch_size' and 'max_new_tokens' must be at least 1")


def run_eval(model: Engine | str | Path, config: EvalConfig) -> dict[str, Any]:
    """Evaluate `model` (an Engine or a checkpoint directory) on `config.benchmarks`; writes
    `results.json`, `report.md` and `report.html` into `config.out_dir` and returns the results."""
    started = time.perf_counter()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders = benchmark_folders(config)
    benchmarks = {name: _load(name, folder, config.limit) for name, folder in folders.items()}
    engine = model if isinstance(model, Engine) else Engine.from_checkpoint(
        model, EngineConfig(max_batch_size=config.batch_size, device=config.device))
    before = dataclasses.replace(engine.stats)
    results: dict[str, Any] = {
        "model": str(model) if not isinstance(model, Engine) else None,
        "config": to_dict(config), "versions": versions(), "benchmarks": {},
    }
    with progress_bar() as progress:
        for name, (benchmark, available) in benchmarks.items():
            t = time.perf_counter()
            predictions, errors = _generate(engine, benchmark, config, progress)
            scored = benchmark.score(predictions)
            for row, item in zip(scored["items"], benchmark.items):
                row.update(question=item.question, answers=item.answers, raw=predictions.get(item.id),
                           **({"error": errors[item.id]} if item.id in errors else {}))
            replies = [text for text in predictions.values() if text is not None]
            results["benchmarks"][name] = {
                **scored, "interval": interval(scored), "refused": sum(map(is_refusal, replies)) / max(len(replies), 1),
                "prompt": config.templates.get(name, benchmark.template),
                "folder": str(folders[name]), "available": available, "errors": len(errors),
                "seconds": round(time.perf_counter() - t, 2)}
            if config.blind:
                blind = benchmark.score(_generate(engine, benchmark, config, progress, blind=True)[0])
                results["benchmarks"][name]["blind"] = {"metrics": blind["metrics"], "interval": interval(blind)}
    if config.hallucination is not None:
        hallucination = config.hallucination
        if hallucination.data is None and config.data_root is not None:
            hallucination = dataclasses.replace(hallucination, data=str(Path(config.data_root) / HALLUCINATION_DIR))
        results["hallucination"] = run_hallucination(engine, hallucination, out / "hallucination",
                                                     checkpoint=None if isinstance(model, Engine) else model)
    results["seconds"] = round(time.perf_counter() - started, 2)
    results["tokens_per_second"] = _tokens_per_second(before, engine.stats)
    write_json(out / "results.json", results)
    write_reports(results, out)
    return results


def benchmark_folders(config: EvalConfig) -> dict[str, Path]:
    """Each chosen benchmark's folder: from `paths`, else under `data_root`."""
    if config.data_root is not None:
        root = Path(config.data_root)
        if not root.is_dir():
            raise DataError(f"data root {root} is not a directory; pass the folder that holds one folder of "
                            f"official files per benchmark (vqav2/, gqa/, ...)")
        default = {name: root / get_benchmark(name).data_dir for name in config.benchmarks}
    elif set(config.benchmarks) <= set(config.paths):
        default = {}
    else:
        missing = sorted(set(config.benchmarks) - set(config.paths))
        raise ConfigError(f"no data for {', '.join(missing)}: pass --data-root DIR (one folder of official files "
                          "per benchmark: vqav2/, gqa/, ...), or write synthetic suites in the official formats "
                          "with `vlstack data synth-eval DIR` and pass that")
    return {name: Path(config.paths[name]) if name in config.paths else default[name] for name in config.benchmarks}


def versions() -> dict[str, str]:
    """What produced the numbers: library versions and machine, stored with every result."""
    return {"vlstack": vlstack.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.machine()}


def _load(name: str, folder: Path, limit: int | None) -> tuple[Benchmark, int]:
    """The benchmark read from `folder`, cut to its first `limit` questions; and how many the files hold."""
    cls = get_benchmark(name)
    if not folder.is_dir():
        raise VlstackError(f"{name}: data folder {folder} does not exist; pass --data-root DIR holding "
                           f"{cls.data_dir}/, or set paths.{name}=FOLDER")
    benchmark = cls.from_root(folder)
    available = len(benchmark.items)
    return (benchmark if limit is None or limit >= available else cls(benchmark.items[:limit])), available


def interval(scored: dict[str, Any]) -> float | None:
    """Half-width of the 95% interval of the primary metric (normal approximation over its per-item scores,
    in points); None for a corpus-level metric (BLEU) that is no mean over items."""
    values = [row["scores"][scored["primary"]] for row in scored["items"] if scored["primary"] in row["scores"]]
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return 100 * 1.96 * math.sqrt(variance / len(values))


def _generate(engine: Engine, benchmark: Benchmark, config: EvalConfig, progress: Progress, blind: bool = False
              ) -> tuple[dict[str, str], dict[str, str]]:
    """Raw replies by item id, in batches; and the reason for each item that could not be asked. `blind`:
    each question with a uniform grey image instead of its own."""
    task = progress.add_task(f"{benchmark.name} (blind)" if blind else benchmark.name, total=len(benchmark.items))
    predictions: dict[str, str] = {}
    errors: dict[str, str] = {}
    for start in range(0, len(benchmark.items), config.batch_size):
        chunk = benchmark.items[start : start + config.batch_size]
        asked, requests = [], []
        for item in chunk:
            try:
                requests.append(_request(engine, benchmark, item, config, blind))
                asked.append(item)
            except (VlstackError, OSError) as error:
                errors[item.id] = str(error)
        for item, result in zip(asked, engine.generate(requests)):
            predictions[item.id] = result.text
        progress.update(task, advance=len(chunk), status=f"{len(errors)} not asked" if errors else "")
    return predictions, errors


def _tokens_per_second(before: EngineStats, after: EngineStats) -> float:
    """The decode rate of this run alone (an Engine passed in may have generated before)."""
    seconds = after.decode_seconds - before.decode_seconds
    return round((after.generated_tokens - before.generated_tokens) / seconds, 1) if seconds else 0.0


def _request(engine: Engine, benchmark: Benchmark, item: EvalItem, config: EvalConfig, blind: bool = False
             ) -> Request:
    """The item's question as an Engine request; raises if its image is unreadable or the prompt too long."""
    with Image.open(item.image) as file:
        image = Image.new("RGB", file.size, (128, 128, 128)) if blind else file.convert("RGB")
    request = Request.ask(benchmark.prompt(item, config.templates.get(benchmark.name)), image,
                          max_new_tokens=config.max_new_tokens, seed=config.seed)
    engine.prompt_ids(request)  # raises InputError when the prompt and its answer exceed the context
    return request
