"""VQAv2 (Goyal et al. 2017): questions and annotations JSON over COCO images, scored by vqaEval.py's accuracy."""

from __future__ import annotations

from pathlib import Path

from vlstack.data.schema import Rejected
from vlstack.data.sources import vqav2_questions
from vlstack.errors import DataError
from vlstack.eval.benchmarks.base import Benchmark, EvalItem, first_line, register
from vlstack.eval.benchmarks.files import check_images, existing_dir, existing_file
from vlstack.eval.metrics import normalize_vqa_answer, vqa_accuracy

QUESTIONS = "v2_OpenEnded_mscoco_{split}_questions.json"
ANNOTATIONS = "v2_mscoco_{split}_annotations.json"
IMAGE_NAME = "COCO_{subtype}_{image_id:012d}.jpg"
ANSWERS_PER_QUESTION = 10


@register("vqav2")
class VQAv2(Benchmark):
    """Open-ended VQAv2; accuracy overall and per answer type (yes/no, number, other), as vqaEval.py."""

    data_dir = "vqav2"
    primary = "accuracy"
    group_by = "answer_type"

    @classmethod
    def load(cls, questions: str | Path, annotations: str | Path, image_dir: str | Path,
             image_pattern: str | None = None) -> VQAv2:
        """Each question with its ten human answers; images by `image_pattern` (`{image_id}` is filled
        in), by default COCO's `COCO_{data_subtype}_{image_id:012d}.jpg` from the questions file. The
        records come from the data layer's VQAv2 parser; here any problem stops the load."""
        existing_file(questions, "VQAv2 questions file")
        existing_file(annotations, "VQAv2 annotations file")
        image_dir = existing_dir(image_dir, "VQAv2 image folder")
        default_pattern, records = vqav2_questions(questions, annotations)
        items = []
        for record in records:
            if isinstance(record, Rejected):
                raise DataError(f"{record.source}: {record.detail}; VQAv2 needs every question with its annotation "
                                "(pass the annotations of the same split)")
            if len(record["answers"]) != ANSWERS_PER_QUESTION:
                raise DataError(f"{annotations}: question {record['question_id']}: 'answers' must hold "
                                f"{ANSWERS_PER_QUESTION} answer objects (the leave-one-out accuracy is defined on ten), "
                                f"found {len(record['answers'])}")
            meta = {k: record[k] for k in ("image_id", "answer_type", "question_type", "multiple_choice_answer")}
            image = image_dir / (image_pattern or default_pattern).format(image_id=record["image_id"])
            items.append(EvalItem(str(record["question_id"]), image, record["question"], record["answers"], meta=meta))
        check_images((item.image for item in items), "VQAv2")
        return cls(items)

    @classmethod
    def from_root(cls, root: str | Path, split: str = "val2014") -> VQAv2:
        root = Path(root)
        return cls.load(root / QUESTIONS.format(split=split), root / ANNOTATIONS.format(split=split), root / split)

    def postprocess(self, item: EvalItem, text: str) -> str:
        """The first line, put through vqaEval.py's answer processing.

        The official script leaves a prediction raw when the ten answers agree; cleaning it
        here, as LLaVA does (EvalAIAnswerProcessor) before submitting to the VQA server, keeps
        "Yes." from scoring 0 on a question whose ten answers are all "yes".
        """
        return normalize_vqa_answer(first_line(text))

    def score_item(self, item: EvalItem, prediction: str) -> dict[str, float]:
        return {"accuracy": vqa_accuracy(prediction, item.answers)}
