"""ChartQA (Masry et al. 2022): `{split}_{human|augmented}.json` (imgname, query, label) over PNG charts,
scored by relaxed accuracy."""

from __future__ import annotations

from pathlib import Path

from vlstack.errors import DataError
from vlstack.eval.benchmarks.base import Benchmark, EvalItem, register
from vlstack.eval.benchmarks.files import check_images, existing_dir, field
from vlstack.eval.metrics import relaxed_accuracy
from vlstack.files import read_json

ANNOTATIONS = "{split}_{subset}.json"
IMAGES = "png"


@register("chartqa")
class ChartQA(Benchmark):
    data_dir = "chartqa"
    primary = "relaxed_accuracy"

    @classmethod
    def load(cls, annotations: str | Path, image_dir: str | Path) -> ChartQA:
        """Entry n of the file becomes item `{file stem}-{n}` (ChartQA has no question ids)."""
        data = read_json(annotations, "ChartQA annotations file", list)
        image_dir = existing_dir(image_dir, "ChartQA image folder")
        stem, items = Path(annotations).stem, []
        for number, entry in enumerate(data):
            where = f"{annotations}: entry {number}"
            if not isinstance(entry, dict):
                raise DataError(f"{where} is a {type(entry).__name__}, not an object")
            imgname = field(entry, "imgname", str, where)
            items.append(EvalItem(f"{stem}-{number}", image_dir / imgname, field(entry, "query", str, where),
                                  [str(field(entry, "label", (str, int, float), where))], meta={"imgname": imgname}))
        check_images((item.image for item in items), "ChartQA")
        return cls(items)

    @classmethod
    def from_root(cls, root: str | Path, split: str = "test", subset: str = "human") -> ChartQA:
        folder = Path(root) / split
        return cls.load(folder / ANNOTATIONS.format(split=split, subset=subset), folder / IMAGES)

    def score_item(self, item: EvalItem, prediction: str) -> dict[str, float]:
        return {"relaxed_accuracy": float(relaxed_accuracy(prediction, item.answers[0]))}
