"""What every benchmark is: official files in, `EvalItem`s and prompts out, generations scored back.

A benchmark module loads its official schema into `EvalItem`s, says how to ask
(`prompt`), how to read the model's reply (`postprocess`) and how to score one
answer with `vlstack.eval.metrics` (`score_item`). `Benchmark.score` does the rest
the same way for all: unknown ids are an error, and a missing or blank prediction is
scored 0 and counted, so the denominator is always every question of the benchmark.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vlstack.errors import DataError, VlstackError

SHORT_ANSWER = "{question}\nAnswer the question using a single word or phrase."
SHORT_ANSWER_ZH = "{question}\n请用一个词或短语回答。"
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass
class EvalItem:
    """One question of a benchmark, whatever its source format."""

    id: str
    """The official question id as a string: predictions are keyed by it."""
    image: Path
    question: str
    answers: list[str]
    """The reference answers the metric compares with (ten for VQAv2, one for GQA, ...)."""
    choices: list[str] = field(default_factory=list)
    """Multiple-choice options, in order (A-OKVQA)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Official fields the score needs or breaks down by (answer type, correct choice, ...)."""


class Benchmark(ABC):
    """A loaded benchmark; subclasses are registered under `name` with `@register`."""

    name: ClassVar[str] = ""
    data_dir: ClassVar[str]
    """The folder under a data root (and of the synthetic suites) holding this benchmark's files."""
    primary: ClassVar[str]
    """The headline metric, a key of `score(...)["metrics"]`."""
    group_by: ClassVar[str | None] = None
    """A `meta` key to break the metrics down by (VQAv2 answer type, ...)."""
    template: ClassVar[str] = SHORT_ANSWER
    template_zh: ClassVar[str] = SHORT_ANSWER_ZH

    def __init__(self, items: list[EvalItem]) -> None:
        if not items:
            raise DataError(f"{type(self).__name__}: the files hold no questions to evaluate")
        repeated = sorted(i for i, n in Counter(item.id for item in items).items() if n > 1)
        if repeated:
            raise DataError(f"{type(self).__name__}: question ids repeat, e.g. {repeated[:5]}")
        self.items = items

    @classmethod
    @abstractmethod
    def from_root(cls: type[B], root: str | Path) -> B:
        """Load the official files by their usual names inside `root` (the benchmark's own folder)."""

    def prompt(self, item: EvalItem, template: str | None = None) -> str:
        """The text the model is asked: `template` (by default the official one, `template_zh` for a Chinese
        question) filled in."""
        template = template or (self.template_zh if _CJK.search(item.question) else self.template)
        return template.format(question=item.question, **self.prompt_fields(item))

    def prompt_fields(self, item: EvalItem) -> dict[str, str]:
        """Template fields besides `question` (A-OKVQA's lettered options)."""
        return {}

    def postprocess(self, item: EvalItem, text: str) -> str:
        """The answer read from a raw generation: its first non-blank line."""
        return first_line(text)

    @abstractmethod
    def score_item(self, item: EvalItem, prediction: str) -> dict[str, float]:
        """Per-item scores in [0, 1] of a post-processed prediction."""

    def corpus_scores(self, predictions: list[str]) -> dict[str, float]:
        """Scores that are not means over items (BLEU), in percent; one prediction per item, "" if none."""
        return {}

    def score(self, predictions: Mapping[str, str | None]) -> dict[str, Any]:
        """Score raw generations keyed by item id; metrics are percentages over all items.

        A prediction for an id that is not in the benchmark is an error. An item with no
        prediction (absent or None) or a blank one scores 0 on every metric and is counted
        in `missing` / `empty`.
        """
        unknown = sorted(set(predictions) - {item.id for item in self.items}, key=str)
        if unknown:
            raise DataError(f"{len(unknown)} predictions have ids that are not questions of {self.name}, "
                            f"e.g. {unknown[:5]!r}; keys must be the EvalItem ids (strings)")
        rows, answers = [], []
        for item in self.items:
            raw = predictions.get(item.id)
            if raw is not None and not isinstance(raw, str):
                raise DataError(f"{self.name}: the prediction for {item.id!r} is a {type(raw).__name__}, not a str")
            status = "missing" if raw is None else "empty" if not raw.strip() else "ok"
            answer = self.postprocess(item, raw) if status == "ok" else ""
            scores = self.score_item(item, answer)
            if status != "ok":
                scores = dict.fromkeys(scores, 0.0)
            answers.append(answer)
            rows.append({"id": item.id, "prediction": answer, "status": status, "scores": scores})
        metrics = {**_means(rows), **self.corpus_scores(answers)}
        result = {"benchmark": self.name, "primary": self.primary, "metrics": metrics, "count": len(rows),
                  "missing": sum(r["status"] == "missing" for r in rows),
                  "empty": sum(r["status"] == "empty" for r in rows), "items": rows}
        if self.group_by:
            groups = defaultdict(list)
            for item, row in zip(self.items, rows):
                groups[str(item.meta.get(self.group_by))].append(row)
            result["groups"] = {name: {**_means(group), "count": len(group)} for name, group in sorted(groups.items())}
        return result


B = TypeVar("B", bound=Benchmark)
BENCHMARKS: dict[str, type[Benchmark]] = {}
"""Every registered benchmark by name; a module registers its class with `@register(name)`."""


def register(name: str) -> Callable[[type[B]], type[B]]:
    """Class decorator: add a benchmark to `BENCHMARKS` under `name`."""
    def add(cls: type[B]) -> type[B]:
        if name in BENCHMARKS:
            raise VlstackError(f"benchmark {name!r} is registered twice ({BENCHMARKS[name].__name__}, {cls.__name__})")
        cls.name = name
        BENCHMARKS[name] = cls
        return cls
    return add


def get_benchmark(name: str) -> type[Benchmark]:
    """The registered benchmark class called `name`."""
    if name not in BENCHMARKS:
        raise VlstackError(f"unknown benchmark {name!r}; valid: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def first_line(text: str) -> str:
    """The first non-blank line of a generation, stripped: models often explain after answering."""
    return text.strip().split("\n", 1)[0].strip()


def short_answer(text: str) -> str:
    """First line, lower-cased, without a final full stop: what single-word answer sets (GQA, A-OKVQA) store."""
    return first_line(text).rstrip(".。").lower()


def _means(rows: list[dict]) -> dict[str, float]:
    """The mean of each score in percent over the rows that have it (closed vs open questions differ)."""
    totals: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for key, value in row["scores"].items():
            totals[key].append(value)
    return {key: 100.0 * sum(values) / len(values) for key, values in totals.items()}
