"""A-OKVQA (Schwenk et al. 2022): `aokvqa_v1p0_{split}.json` over COCO 2017 images; multiple choice
(`aokvqa`) and direct answer (`aokvqa_da`), scored as allenai/aokvqa's eval_predictions.py."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import ClassVar

from vlstack.errors import DataError
from vlstack.eval.benchmarks.base import (
    SHORT_ANSWER,
    SHORT_ANSWER_ZH,
    Benchmark,
    EvalItem,
    first_line,
    register,
    short_answer,
)
from vlstack.eval.benchmarks.files import check_images, existing_dir, field, text_list
from vlstack.eval.metrics import aokvqa_da_accuracy, aokvqa_mc_accuracy
from vlstack.files import read_json

ANNOTATIONS = "aokvqa_v1p0_{split}.json"
_LETTER = re.compile(r"\(?([A-Z])(?:[.:)]|$)")


@register("aokvqa")
class AOKVQA(Benchmark):
    """Multiple choice: the choices are shown with letters; the answer must be the correct choice."""

    data_dir = "aokvqa"
    primary = "mc_accuracy"
    template = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
    template_zh = "{question}\n{options}\n请直接回答选项的字母。"
    keep_difficult: ClassVar[bool] = True
    """eval_predictions.py drops `difficult_direct_answer` questions from the direct-answer score only."""

    @classmethod
    def load(cls, annotations: str | Path, coco_root: str | Path) -> AOKVQA:
        """Each question; its image is `{coco_root}/{split}2017/{image_id:012d}.jpg` (load_aokvqa.py)."""
        data = read_json(annotations, "A-OKVQA annotations file", list)
        coco_root = existing_dir(coco_root, "COCO root")
        items = []
        for number, entry in enumerate(data):
            where = f"{annotations}: entry {number}"
            if not isinstance(entry, dict):
                raise DataError(f"{where} is a {type(entry).__name__}, not an object")
            if "direct_answers" not in entry:
                raise DataError(f"{where}: no 'direct_answers' (the test split's answers are private; "
                                f"score it on the A-OKVQA leaderboard or use the val split)")
            difficult = field(entry, "difficult_direct_answer", bool, where)
            if difficult and not cls.keep_difficult:
                continue
            choices = text_list(entry, "choices", where)
            correct = field(entry, "correct_choice_idx", int, where)
            if not 0 <= correct < len(choices):
                raise DataError(f"{where}: correct_choice_idx {correct} is outside the {len(choices)} choices")
            split, image_id = field(entry, "split", str, where), field(entry, "image_id", int, where)
            items.append(EvalItem(str(field(entry, "question_id", (str, int), where)),
                                  coco_root / f"{split}2017" / f"{image_id:012d}.jpg",
                                  field(entry, "question", str, where), text_list(entry, "direct_answers", where),
                                  choices=choices, meta={"correct_choice_idx": correct,
                                                         "difficult_direct_answer": difficult}))
        check_images((item.image for item in items), "A-OKVQA")
        return cls(items)

    @classmethod
    def from_root(cls, root: str | Path, split: str = "val") -> AOKVQA:
        """`root` holds the annotation file and COCO's `{split}2017/` image folder."""
        root = Path(root)
        return cls.load(root / ANNOTATIONS.format(split=split), root)

    def prompt_fields(self, item: EvalItem) -> dict[str, str]:
        letters = string.ascii_uppercase
        return {"options": "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, item.choices))}

    def postprocess(self, item: EvalItem, text: str) -> str:
        """The choice the reply names, by letter ("B", "(B)", "B. dog") or by its text; else the reply.

        The official script needs the exact choice text; A-OKVQA's own baselines map free
        text to the nearest choice by embedding similarity, which is not done here.
        """
        answer = first_line(text)
        letter = _LETTER.match(answer)
        if letter and string.ascii_uppercase.index(letter.group(1)) < len(item.choices):
            return item.choices[string.ascii_uppercase.index(letter.group(1))]
        return next((choice for choice in item.choices if choice.lower() == answer.rstrip(".").lower()), answer)

    def score_item(self, item: EvalItem, prediction: str) -> dict[str, float]:
        return {"mc_accuracy": aokvqa_mc_accuracy(prediction, item.choices, item.meta["correct_choice_idx"])}


@register("aokvqa_da")
class AOKVQADirect(AOKVQA):
    """Direct answer: a short free answer against the ten direct answers, difficult questions left out."""

    primary = "da_accuracy"
    template = SHORT_ANSWER
    template_zh = SHORT_ANSWER_ZH
    keep_difficult = False

    def postprocess(self, item: EvalItem, text: str) -> str:
        return short_answer(text)

    def score_item(self, item: EvalItem, prediction: str) -> dict[str, float]:
        return {"da_accuracy": aokvqa_da_accuracy(prediction, item.answers)}
