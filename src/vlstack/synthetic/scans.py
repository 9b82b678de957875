"""Synthetic grayscale scans with lesion-like blobs, and questions whose answers are checkable.

A scan is an axial-slice cartoon: air, an elliptical body with smooth tissue texture,
two darker lung-like fields and a bright spine, and in about half of the scans one
bright round lesion on the left or the right of the image. "Left" and "right" here
are sides of the image, not the patient's sides (radiology shows the patient's right
on the image's left), and the questions say so.

Three question types teach what the medical assistant is asked: lesion presence
(yes/no), its side, and a short report in answer to the article's findings prompt
(`REPORT_PROMPTS`), whose wording `read_findings` parses back, so a model's findings
on a scan can be scored against the truth. Presence and side are asked in several
wordings (`WORDINGS`), VQA-RAD's question forms among them: its synthetic suite
(`synthetic.suites`) asks about these scans. Every scan is a pure function of
(seed, index); splits draw from their own seeds, as in `synthetic.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from vlstack.apps.medical import REPORT_PROMPTS
from vlstack.data.schema import IMAGE_TOKEN, ImageRef, Sample
from vlstack.errors import DataError
from vlstack.synthetic.phrasings import open_question
from vlstack.synthetic.scenes import Language, encode_image, split_seed

QUESTION_TYPES = ("presence", "side", "report")
SIDES = ("left", "right")


@dataclass(frozen=True)
class Wording:
    """One way to ask a presence or side question, in English and Chinese."""

    en: str
    zh: str
    """`{asked}` in either is filled with a side (左 / 右 in Chinese)."""
    answer: str
    """What answers it: `has` (is there a lesion: yes / no), `normal` (is there none: yes / no), `side` (the
    lesion's side), `lung` (the lung it lies in), `on_side` (is it on the side asked: yes / no)."""
    vqarad_type: str
    """VQA-RAD's question type: PRES (presence), ABN (abnormality) or POS (position)."""


WORDINGS = {
    "presence": (Wording("Is there a lesion in this scan?", "这张影像中有病灶吗？", "has", "PRES"),
                 Wording("Is there an abnormality in this image?", "这张图像有异常吗？", "has", "ABN"),
                 Wording("Is this image normal?", "这张图像正常吗？", "normal", "ABN")),
    "side": (Wording("On which side of the image is the lesion?", "病灶位于图像的哪一侧？", "side", "POS"),
             Wording("Which side is the lesion on?", "病灶在哪一侧？", "side", "POS"),
             Wording("Is the lesion on the {asked} side?", "病灶在{asked}侧吗？", "on_side", "POS"),
             Wording("Where is the lesion located?", "病灶位于什么部位？", "lung", "POS")),
}
"""The questions by type, VQA-RAD's forms among them (every scan is a chest cross-section, so a lesion lies in
the left or the right lung); `scan_question` asks the first of a type without a random draw."""
_SIDE_ZH = {"left": "左", "right": "右"}
"""A side in Chinese: 左侧 (the left side), 左肺 (the left lung)."""
_REPORTS = {
    "en": {"left": "A round hyperdense lesion on the left of the image. Possible diagnoses: nodule, mass.",
           "right": "A round hyperdense lesion on the right of the image. Possible diagnoses: nodule, mass.",
           None: "No focal lesion. No abnormality."},
    "zh": {"left": "图像左侧见圆形高密度病灶。可能诊断：结节，肿块。",
           "right": "图像右侧见圆形高密度病灶。可能诊断：结节，肿块。",
           None: "未见局灶性病灶。未见异常。"},
}


@dataclass(frozen=True)
class Lesion:
    x: float
    y: float
    radius: float
    side: str
    """`left` or `right` of the image."""

    @property
    def box(self) -> list[int]:
        """[x0, y0, x1, y1] in pixels: where the blob adds more than a tenth of its peak."""
        r = 1.4 * self.radius
        return [int(self.x - r), int(self.y - r), int(np.ceil(self.x + r)), int(np.ceil(self.y + r))]


@dataclass
class Scan:
    pixels: np.ndarray
    """uint8 [H, W] grayscale."""
    lesion: Lesion | None

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels, mode="L")


def scan(seed: int, index: int, size: int = 64, draw_lesion: bool = True) -> Scan:
    """Scan `index` of the corpus `seed`: a body cross-section with a lesion in about half of the scans.
    `draw_lesion=False` gives the same scan without its lesion (the truth still names it): the counterfactual."""
    rng = random.Random(seed * 1_000_003 + index)
    noise = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size / 2 + rng.uniform(-1.5, 1.5), size / 2 + rng.uniform(-1.5, 1.5)
    ax, ay = size * rng.uniform(0.40, 0.45), size * rng.uniform(0.32, 0.38)
    body = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
    texture = cv2.GaussianBlur(noise.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 16)
    values = np.where(body, rng.uniform(95, 110) + 40 * texture, 0.0)
    for sign in (-1, 1):  # lung-like fields, mirrored about the midline
        lx, ly = cx + sign * ax * 0.45, cy - ay * 0.1
        lung = ((xx - lx) / (ax * 0.32)) ** 2 + ((yy - ly) / (ay * 0.55)) ** 2 <= 1
        values = np.where(lung, rng.uniform(35, 50), values)
    spine = (xx - cx) ** 2 + (yy - (cy + ay * 0.7)) ** 2 <= (size * 0.06) ** 2
    values = np.where(spine, 210.0, values)
    lesion = None
    if rng.random() < 0.5:
        side = rng.choice(SIDES)
        radius = size * rng.uniform(0.07, 0.11)
        offset = ax * rng.uniform(0.3, 0.65)
        x = cx - offset if side == "left" else cx + offset
        y = cy + ay * rng.uniform(-0.45, 0.35)
        lesion = Lesion(round(x, 2), round(y, 2), round(radius, 2), side)
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (radius / 1.6) ** 2))
        values = values + rng.uniform(110, 150) * blob * draw_lesion
    values = values + noise.normal(0, 3, (size, size)) * body
    return Scan(np.clip(values, 0, 255).round().astype(np.uint8), lesion)


def scan_samples(n: int, seed: int = 0, split: str = "train", lang: Language = "en", image_size: int = 64,
                 question_types: tuple[str, ...] = QUESTION_TYPES) -> list[Sample]:
    """`n` vqa samples, one per scan, each asking one of `question_types` (side only when there is a lesion).

    Each sample holds the question and answer both as `question`/`answers` and as one LLaVA exchange in
    `conversations`, with `meta["dataset"] = "scans"`, so it serves as an instruction dataset as is.
    """
    unknown = sorted(set(question_types) - set(QUESTION_TYPES))
    if unknown or not question_types:
        raise DataError(f"unknown question type(s) {unknown}; choose from {', '.join(QUESTION_TYPES)}")
    stream = split_seed(seed, split)
    return [scan_sample(stream, i, split, lang, image_size, question_types) for i in range(n)]


def scan_sample(seed: int, index: int, split: str = "train", lang: Language = "en", image_size: int = 64,
                question_types: tuple[str, ...] = QUESTION_TYPES) -> Sample:
    item = scan(seed, index, image_size)
    rng = random.Random(f"scan-question:{seed}:{index}")
    kind = rng.choice([t for t in question_types if t != "side" or item.lesion] or ["presence"])
    question, answer, _ = scan_question(item, kind, lang, rng)
    meta = {"source": "synthetic-scans", "dataset": "scans", "split": split, "seed": seed, "index": index,
            "lang": lang, "question_type": kind,
            "lesion": None if item.lesion is None else {"side": item.lesion.side, "box": item.lesion.box}}
    # a short question in one of the split's phrasings; the report request as the assistant asks it (a phrasing
    # that asks for one word must not get a report)
    prompt = question if kind == "report" else open_question(question, split, lang, rng)
    turns = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"}, {"from": "gpt", "value": answer}]
    return Sample(f"scan-{seed}-{index:06d}", "vqa", [ImageRef("png", encode_image(item.image))],
                  question=question, answers=[answer], conversations=turns, meta=meta).validate()


def scan_question(item: Scan, kind: str, lang: Language = "en", rng: random.Random | None = None
                  ) -> tuple[str, str, str]:
    """(question, answer, VQA-RAD question type) of type `kind` about `item`, in one of the type's `WORDINGS`
    drawn by `rng` (the first without one)."""
    side = item.lesion.side if item.lesion else None
    if kind == "report":
        return REPORT_PROMPTS[lang], findings_text(side, lang), "PRES"
    if kind == "side" and side is None:
        raise DataError("a side question needs a scan with a lesion")
    wording = rng.choice(WORDINGS[kind]) if rng else WORDINGS[kind][0]
    asked = rng.choice(SIDES) if rng else SIDES[0]
    zh = lang == "zh"
    question = wording.zh.format(asked=_SIDE_ZH[asked]) if zh else wording.en.format(asked=asked)
    yes, no = ("yes", "no") if not zh else ("有", "没有") if wording.answer == "has" else ("是", "不是")
    if wording.answer == "has":
        answer = yes if side else no
    elif wording.answer == "normal":
        answer = no if side else yes
    elif wording.answer == "on_side":
        answer = yes if asked == side else no
    elif wording.answer == "side":
        answer = f"{_SIDE_ZH[side]}侧" if zh else side
    else:  # lung
        answer = f"{_SIDE_ZH[side]}肺" if zh else f"{side} lung"
    return question, answer, wording.vqarad_type


def findings_text(side: str | None, lang: Language = "en") -> str:
    """The reference report of a scan with a lesion on `side` (None: no lesion)."""
    return _REPORTS[lang][side]


def read_findings(text: str) -> dict[str, bool | str | None]:
    """What a report in the `findings_text` wording (either language) says: lesion present, and its side.

    `lesion` is None when the text says neither, so an off-template answer scores as wrong, never as a guess.
    """
    lowered = text.lower()
    negative = "no focal lesion" in lowered or "未见局灶性病灶" in text
    sides = [s for s in SIDES if f"on the {s}" in lowered or f"{_SIDE_ZH[s]}侧" in text]
    if negative:
        return {"lesion": False, "side": None}
    if len(sides) == 1 and ("lesion" in lowered or "病灶" in text):
        return {"lesion": True, "side": sides[0]}
    return {"lesion": None, "side": None}
