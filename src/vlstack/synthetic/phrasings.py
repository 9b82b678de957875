"""How the synthetic instruction data words its questions: several phrasings per task, split in two.

A model that learned one template answers only that template (the demo's final model once refused every
benchmark question, all asked with the short-answer suffix it had never seen). So each question is asked in
one of several phrasings, the benchmarks' own formats among them (the short-answer suffix, lettered
multiple choice, "Is there a ... in the image?"), and the validation and test splits use phrasings that
training never shows, so a held-out score measures answers, not recall of a template.
"""

from __future__ import annotations

import random
import string

from vlstack.eval.benchmarks.aokvqa import AOKVQA
from vlstack.eval.benchmarks.base import SHORT_ANSWER, SHORT_ANSWER_ZH
from vlstack.eval.hallucination.pope import POPE_TEMPLATE
from vlstack.synthetic.scenes import Language

OPEN: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"en": ("{question}", SHORT_ANSWER, "{question} Answer briefly.", "Look at the image. {question}",
                     "Question: {question}\nAnswer:"),
              "zh": ("{question}", SHORT_ANSWER_ZH, "看图回答：{question}", "问题：{question}\n回答：")},
    "held_out": {"en": ("{question} Reply with one word.", "Please answer this: {question}"),
                 "zh": ("{question}简短回答。", "请回答：{question}")},
}
"""Open questions: `{question}` in a phrasing, per split and language."""
CHOICE: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"en": (AOKVQA.template, "{question}\n{options}\nChoose the right option."),
              "zh": ("{question}\n{options}\n请直接回答选项的字母。",)},
    "held_out": {"en": ("{question}\nOptions:\n{options}\nWhich letter is correct?",),
                 "zh": ("{question}\n选项：\n{options}\n哪个字母是对的？",)},
}
"""Multiple choice with lettered options (A-OKVQA's format first); the answer is the letter."""
EXISTS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"en": (POPE_TEMPLATE, "Is there a {} in the picture? Answer yes or no."), "zh": ("图中有{}吗？",)},
    "held_out": {"en": ("Does the image show a {}?", "Can you see a {} here?"), "zh": ("这张图里能看到{}吗？",)},
}
"""Yes/no existence questions (POPE's template first) on an object name."""
YES_NO = {"en": ("yes", "no"), "zh": ("有", "没有")}


def _part(split: str) -> str:
    return "train" if split == "train" else "held_out"


def open_question(question: str, split: str, lang: Language, rng: random.Random) -> str:
    return rng.choice(OPEN[_part(split)][lang]).format(question=question)


def choice_question(question: str, answer: str, distractors: list[str], split: str, lang: Language,
                    rng: random.Random) -> tuple[str, str]:
    """(prompt, the answer's letter) with `answer` among three of `distractors`, in random order."""
    choices = rng.sample([d for d in distractors if d != answer], 3) + [answer]
    rng.shuffle(choices)
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, choices))
    template = rng.choice(CHOICE[_part(split)][lang])
    return template.format(question=question, options=options), string.ascii_uppercase[choices.index(answer)]


def exists_question(name: str, present: bool, split: str, lang: Language, rng: random.Random) -> tuple[str, str]:
    """(prompt, yes / no) asking whether a `name` is in the image, with POPE's article rule ("an" before a vowel)."""
    template = rng.choice(EXISTS[_part(split)][lang])
    if lang == "en" and name[:1] in "aeiou":
        template = template.replace("a {}", "an {}", 1)
    return template.format(name), YES_NO[lang][0 if present else 1]
