"""GQA (Hudson & Manning 2019): the questions JSON (id -> question) over Visual Genome images, exact match."""

from __future__ import annotations

from pathlib import Path

from vlstack.errors import DataError
from vlstack.eval.benchmarks.base import Benchmark, EvalItem, register, short_answer
from vlstack.eval.benchmarks.files import check_images, existing_dir, field
from vlstack.eval.metrics import exact_match
from vlstack.files import read_json

QUESTIONS = "{split}_questions.json"
IMAGES = "images"


@register("gqa")
class GQA(Benchmark):
    """Accuracy over the balanced questions, overall and for open vs binary ones, as GQA's eval.py."""

    data_dir = "gqa"
    primary = "accuracy"
    group_by = "answer_kind"

    @classmethod
    def load(cls, questions: str | Path, image_dir: str | Path, balanced_only: bool = True) -> GQA:
        """The questions with their answer; eval.py counts only `isBalanced` ones for accuracy,
        so by default the others are left out of the benchmark."""
        data = read_json(questions, "GQA questions file", dict)
        image_dir = existing_dir(image_dir, "GQA image folder")
        items = []
        for question_id, question in data.items():
            where = f"{questions}: question {question_id}"
            if not isinstance(question, dict):
                raise DataError(f"{where} is a {type(question).__name__}, not an object")
            if balanced_only and not field(question, "isBalanced", bool, where):
                continue
            structural = field(field(question, "types", dict, where), "structural", str, where)
            items.append(EvalItem(question_id, image_dir / f"{field(question, 'imageId', str, where)}.jpg",
                                  field(question, "question", str, where), [field(question, "answer", str, where)],
                                  meta={"structural": structural,
                                        "answer_kind": "open" if structural == "query" else "binary"}))
        check_images((item.image for item in items), "GQA")
        return cls(items)

    @classmethod
    def from_root(cls, root: str | Path, split: str = "testdev_balanced") -> GQA:
        root = Path(root)
        return cls.load(root / QUESTIONS.format(split=split), root / IMAGES)

    def postprocess(self, item: EvalItem, text: str) -> str:
        """First line, lower case, no final period (LLaVA's GQA conversion): eval.py compares raw strings."""
        return short_answer(text)

    def score_item(self, item: EvalItem, prediction: str) -> dict[str, float]:
        return {"accuracy": float(exact_match(prediction, item.answers[0]))}
