"""DocVQA (Mathew et al. 2021): the `{split}_v1.0.json` file (a `data` list) over page images, scored by ANLS."""

from __future__ import annotations

from pathlib import Path

from vlstack.errors import DataError
from vlstack.eval.benchmarks.base import Benchmark, EvalItem, register
from vlstack.eval.benchmarks.files import check_images, existing_dir, field, records, text_list
from vlstack.eval.metrics import anls
from vlstack.files import read_json

ANNOTATIONS = "{split}_v1.0.json"


@register("docvqa")
class DocVQA(Benchmark):
    data_dir = "docvqa"
    primary = "anls"

    @classmethod
    def load(cls, annotations: str | Path, image_root: str | Path | None = None) -> DocVQA:
        """Each entry of `data`; its `image` ("documents/x.png") is relative to `image_root`,
        by default the folder of the JSON file, as the dataset is unpacked."""
        data = read_json(annotations, "DocVQA annotations file", dict)
        image_root = existing_dir(image_root if image_root is not None else Path(annotations).parent,
                                  "DocVQA image root")
        items = []
        for number, entry in enumerate(records(data, "data", Path(annotations))):
            where = f"{annotations}: data[{number}]"
            if "answers" not in entry:
                raise DataError(f"{where}: no 'answers' (the test split's answers are private; "
                                f"score it on the DocVQA server or use the val split)")
            items.append(EvalItem(str(field(entry, "questionId", (int, str), where)),
                                  image_root / field(entry, "image", str, where), field(entry, "question", str, where),
                                  text_list(entry, "answers", where),
                                  meta={key: entry.get(key) for key in ("docId", "question_types")}))
        check_images((item.image for item in items), "DocVQA")
        return cls(items)

    @classmethod
    def from_root(cls, root: str | Path, split: str = "val") -> DocVQA:
        folder = Path(root) / split
        return cls.load(folder / ANNOTATIONS.format(split=split), folder)

    def score_item(self, item: EvalItem, prediction: str) -> dict[str, float]:
        return {"anls": anls(prediction, item.answers)}
