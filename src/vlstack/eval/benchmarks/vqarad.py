"""VQA-RAD (Lau et al. 2018): `VQA_RAD Dataset Public.json` over radiology images; closed/open accuracy and BLEU."""

from __future__ import annotations

from pathlib import Path

from vlstack.errors import DataError
from vlstack.eval.benchmarks.base import Benchmark, EvalItem, register
from vlstack.eval.benchmarks.files import check_images, existing_dir, field
from vlstack.eval.metrics import bleu, closed_accuracy, open_accuracy, open_recall
from vlstack.files import read_json

ANNOTATIONS = "VQA_RAD Dataset Public.json"
IMAGES = "VQA_RAD Image Folder"
SPLITS = ("test", "train", "all")
ANSWER_TYPES = ("CLOSED", "OPEN")


@register("vqarad")
class VQARAD(Benchmark):
    """`accuracy` over all questions, `closed_accuracy`, `open_accuracy` / `open_recall` over their own
    questions, and corpus BLEU-1..4 over all (the article reports BLEU-4)."""

    data_dir = "vqarad"
    primary = "bleu_4"

    @classmethod
    def load(cls, annotations: str | Path, image_dir: str | Path, split: str = "test") -> VQARAD:
        """The questions of `split`: the public file marks test questions by a `phrase_type` of
        `test_freeform` / `test_para`; "all" keeps every question."""
        if split not in SPLITS:
            raise DataError(f"unknown VQA-RAD split {split!r}; valid: {', '.join(SPLITS)}")
        data = read_json(annotations, "VQA-RAD annotations file", list)
        image_dir = existing_dir(image_dir, "VQA-RAD image folder")
        items = []
        for number, entry in enumerate(data):
            where = f"{annotations}: entry {number}"
            if not isinstance(entry, dict):
                raise DataError(f"{where} is a {type(entry).__name__}, not an object")
            phrase_type = field(entry, "phrase_type", str, where)
            if split != "all" and phrase_type.startswith("test") != (split == "test"):
                continue
            answer_type = field(entry, "answer_type", str, where).strip().upper()
            if answer_type not in ANSWER_TYPES:
                raise DataError(f"{where}: answer_type must be CLOSED or OPEN, found {entry['answer_type']!r}")
            items.append(EvalItem(str(field(entry, "qid", (int, str), where)),
                                  image_dir / field(entry, "image_name", str, where),
                                  field(entry, "question", str, where),
                                  [str(field(entry, "answer", (str, int, float), where))],
                                  meta={"answer_type": answer_type.lower(), "phrase_type": phrase_type,
                                        **{key: entry.get(key) for key in ("question_type", "image_organ")}}))
        check_images((item.image for item in items), "VQA-RAD")
        return cls(items)

    @classmethod
    def from_root(cls, root: str | Path, split: str = "test") -> VQARAD:
        root = Path(root)
        return cls.load(root / ANNOTATIONS, root / IMAGES, split)

    def score_item(self, item: EvalItem, prediction: str) -> dict[str, float]:
        answer = item.answers[0]
        if item.meta["answer_type"] == "closed":
            correct = closed_accuracy(prediction, answer)
            return {"accuracy": correct, "closed_accuracy": correct}
        correct = open_accuracy(prediction, answer)
        return {"accuracy": correct, "open_accuracy": correct, "open_recall": open_recall(prediction, answer)}

    def corpus_scores(self, predictions: list[str]) -> dict[str, float]:
        """BLEU with add-one smoothing: most answers are one or two words, so without it the
        corpus has almost no 4-grams and BLEU-4 is 0 whatever the model says."""
        scores = bleu(predictions, [item.answers for item in self.items], smooth=True)
        return {key: 100.0 * value for key, value in scores.items()}
