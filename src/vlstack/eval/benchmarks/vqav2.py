"""VQAv2 (Goyal et al. 2017): questions and annotations JSON over COCO images, scored by vqaEval.py's accuracy."""

from __future__ import annotations

from pathlib import Path

from vlstack.errors import DataError
from vlstack.eval.benchmarks.base import Benchmark, EvalItem, first_line, register
from vlstack.eval.benchmarks.files import check_images, existing_dir, field, read_json, records
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
        in), by default COCO's `COCO_{data_subtype}_{image_id:012d}.jpg` from the questions file."""
        question_data = read_json(questions, "VQAv2 questions file", dict)
        annotation_data = read_json(annotations, "VQAv2 annotations file", dict)
        image_dir = existing_dir(image_dir, "VQAv2 image folder")
        if image_pattern is None:
            subtype = field(question_data, "data_subtype", str, str(questions))
            image_pattern = IMAGE_NAME.replace("{subtype}", subtype)
        annotated = {}
        for number, annotation in enumerate(records(annotation_data, "annotations", Path(annotations))):
            annotated[field(annotation, "question_id", int, f"{annotations}: annotations[{number}]")] = annotation
        items = []
        for number, question in enumerate(records(question_data, "questions", Path(questions))):
            where = f"{questions}: questions[{number}]"
            question_id = field(question, "question_id", int, where)
            image_id = field(question, "image_id", int, where)
            if question_id not in annotated:
                raise DataError(f"{where}: question {question_id} has no annotation in {annotations}; "
                                f"pass the annotations of the same split")
            annotation = annotated[question_id]
            meta = {"image_id": image_id,
                    **{key: annotation.get(key) for key in ("answer_type", "question_type", "multiple_choice_answer")}}
            image = image_dir / image_pattern.format(image_id=image_id)
            items.append(EvalItem(str(question_id), image, field(question, "question", str, where),
                                  _answers(annotation, annotations), meta=meta))
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


def _answers(annotation: dict, path: str | Path) -> list[str]:
    where = f"{path}: question {annotation['question_id']}"
    answers = field(annotation, "answers", list, where)
    if len(answers) != ANSWERS_PER_QUESTION or not all(isinstance(a, dict) for a in answers):
        raise DataError(f"{where}: 'answers' must hold {ANSWERS_PER_QUESTION} answer objects (the leave-one-out "
                        f"accuracy is defined on ten), found {len(answers)}")
    return [field(answer, "answer", str, where) for answer in answers]
