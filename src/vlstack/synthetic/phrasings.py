"""How the synthetic instruction data words its questions: many phrasings per task, split in two.

A model that learned one template answers only that template (the demo's final model once refused every
benchmark question, all asked with the short-answer suffix it had never seen). So each question is asked in
a phrasing put together from a lead-in and an instruction (open questions), a question form and an
instruction (yes/no), or an options header and an instruction (lettered multiple choice). The benchmarks'
own formats are among the training phrasings: the short-answer suffix, A-OKVQA's choice line, POPE's
"Is there a ... in the image?". A third of the combinations are held out for the validation and test
splits, while each part still appears in training in other combinations (as the safety data holds out
verb-target pairs), so a held-out score measures answers to new phrasings, not recall of a template.
"""

from __future__ import annotations

import random
import string

from vlstack.eval.benchmarks.aokvqa import AOKVQA
from vlstack.eval.benchmarks.base import SHORT_ANSWER, SHORT_ANSWER_ZH
from vlstack.eval.hallucination.pope import POPE_TEMPLATE
from vlstack.synthetic.scenes import Language

SHORT = {"en": SHORT_ANSWER.removeprefix("{question}"), "zh": SHORT_ANSWER_ZH.removeprefix("{question}")}
LEAD_INS = {"en": ("", "Look at the image. ", "Question: ", "Tell me: ", "Please answer this: ", "Quick question. "),
            "zh": ("", "看图回答：", "问题：", "请回答：", "告诉我：")}
"""What may come before an open question."""
INSTRUCTIONS = {"en": ("", SHORT["en"], " Answer briefly.", "\nAnswer:", " Reply with one word.", " Keep it short."),
                "zh": ("", SHORT["zh"], "简短回答。", "\n回答：", "一个词回答。")}
"""What may come after an open question (the benchmarks' short-answer suffix second)."""
EXISTS_FORMS = {"en": (POPE_TEMPLATE, "Is there a {} in the picture?", "Does the image show a {}?",
                       "Can you see a {} here?", "Is a {} visible?"),
                "zh": ("图中有{}吗？", "这张图里能看到{}吗？", "图片里有没有{}？")}
EXISTS_INSTRUCTIONS = {"en": ("", " Answer yes or no.", SHORT["en"], " Yes or no?"),
                       "zh": ("", "请回答有或没有。", SHORT["zh"])}
CHOICE_HEADERS = ("", "Options:\n", "Choices:\n")
CHOICE_INSTRUCTIONS = (AOKVQA.template.split("{options}\n")[1], "Choose the right option.", "Reply with the letter.",
                       "Which letter is correct?")
YES_NO = {"en": ("yes", "no"), "zh": ("有", "没有")}
DESCRIBE: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"en": ("Describe the image.", "Describe the picture.", "What is in the image?", "What do you see?",
                     "Describe this image briefly."),
              "zh": ("描述这张图片。", "图里有什么？", "简单描述这张图。")},
    "held_out": {"en": ("Tell me what the picture shows.", "What does this image contain?"),
                 "zh": ("说说这张图里有什么。",)},
}
"""Requests for a caption ("Describe the image.", the CHAIR prompt, first)."""
ALWAYS_TRAINED = {"open": {(0, 0), (0, 1)}, "exists": {(0, 0)}, "choice": {(0, 0)}}
"""(first part, second part) pairs that always train: the bare question and the benchmarks' own formats
(the short-answer suffix, POPE's question, A-OKVQA's choice line)."""


def held_out(first: int, second: int, kind: str) -> bool:
    """A third of the (first part, second part) combinations are kept for validation and test."""
    return (first + second) % 3 == 0 and (first, second) not in ALWAYS_TRAINED[kind]


def _pick(kind: str, firsts: int, seconds: int, split: str, rng: random.Random) -> tuple[int, int]:
    pairs = [(a, b) for a in range(firsts) for b in range(seconds) if held_out(a, b, kind) == (split != "train")]
    return rng.choice(pairs)


def describe_request(split: str, lang: Language, rng: random.Random) -> str:
    return rng.choice(DESCRIBE["train" if split == "train" else "held_out"][lang])


def open_question(question: str, split: str, lang: Language, rng: random.Random) -> str:
    lead, instruction = _pick("open", len(LEAD_INS[lang]), len(INSTRUCTIONS[lang]), split, rng)
    return f"{LEAD_INS[lang][lead]}{question}{INSTRUCTIONS[lang][instruction]}"


def choice_question(question: str, answer: str, distractors: list[str], split: str, rng: random.Random
                    ) -> tuple[str, str]:
    """(prompt, the answer's letter) with `answer` among three of `distractors`, in random order (English)."""
    choices = rng.sample([d for d in distractors if d != answer], 3) + [answer]
    rng.shuffle(choices)
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, choices))
    header, instruction = _pick("choice", len(CHOICE_HEADERS), len(CHOICE_INSTRUCTIONS), split, rng)
    prompt = f"{question}\n{CHOICE_HEADERS[header]}{options}\n{CHOICE_INSTRUCTIONS[instruction]}"
    return prompt, string.ascii_uppercase[choices.index(answer)]


def exists_question(name: str, present: bool, split: str, lang: Language, rng: random.Random) -> tuple[str, str]:
    """(prompt, yes / no) asking whether a `name` is in the image, with POPE's article rule ("an" before a vowel)."""
    form, instruction = _pick("exists", len(EXISTS_FORMS[lang]), len(EXISTS_INSTRUCTIONS[lang]), split, rng)
    template = EXISTS_FORMS[lang][form]
    if lang == "en" and name[:1] in "aeiou":
        template = template.replace("a {}", "an {}", 1)
    return template.format(name) + EXISTS_INSTRUCTIONS[lang][instruction], YES_NO[lang][0 if present else 1]
