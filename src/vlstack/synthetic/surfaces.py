"""Synthetic surface-inspection images: brushed-metal textures with scratches, spots and cracks, and their boxes.

One `SurfaceSet` is one production line: every part shares the same texture, each
photograph adds its own sensor noise and lighting, and a `reference` photograph of a
good part comes with the set, as a golden sample does on a real line. Defects are
drawn as masks, so the ground-truth box of each is exact:

- scratch: a thin straight line, darker or brighter than the surface;
- spot: a soft dark stain;
- crack: a dark random-walk polyline.

Severity follows the size (length of a scratch or crack, area of a spot). The samples
teach the inspection assistant: grounding samples (every defect boxed and named) and
crop samples that answer the article's inspection prompt (`INSPECTION_PROMPTS`) with type,
severity and likely cause, in a wording `read_defect_type` parses back. Everything is a
pure function of (seed, split, index).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from vlstack.apps.inspection import INSPECTION_PROMPTS, crop_around
from vlstack.data.schema import IMAGE_TOKEN, ImageRef, Sample
from vlstack.synthetic.scenes import Language, encode_image, split_seed

DEFECT_TYPES = ("scratch", "spot", "crack")
SEVERITIES = ("minor", "moderate", "severe")
_NAMES_ZH = {"scratch": "划痕", "spot": "斑点", "crack": "裂纹", "minor": "轻微", "moderate": "中等", "severe": "严重"}
_CAUSES = {
    "scratch": ("abrasion during handling or machining", "搬运或加工时的摩擦"),
    "spot": ("contamination or residue on the surface", "表面污染或残留物"),
    "crack": ("material fatigue or stress", "材料疲劳或应力"),
}
_NO_DEFECT = {"en": "No defect.", "zh": "无缺陷。"}


@dataclass(frozen=True)
class Defect:
    type: str
    box: tuple[int, int, int, int]
    """Pixel box (x0, y0, x1, y1), x1 and y1 exclusive."""
    severity: str


@dataclass
class SurfaceImage:
    pixels: np.ndarray
    """uint8 RGB [H, W, 3]."""
    defects: list[Defect]

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels, mode="RGB")


@dataclass
class SurfaceSet:
    reference: np.ndarray
    """A defect-free photograph of the same surface (its own noise), uint8 RGB [H, W, 3]."""
    images: list[SurfaceImage]


def surface_set(n: int, seed: int = 0, split: str = "train", size: int = 128, max_defects: int = 3) -> SurfaceSet:
    """`n` photographs of parts of one line; each has 0..`max_defects` defects (a quarter of them none)."""
    seed = split_seed(seed, split)
    texture = _texture(np.random.default_rng([seed, 0]), size)
    reference = _photograph(texture, np.random.default_rng([seed, 1]))
    return SurfaceSet(reference, [surface_image(texture, seed, i, max_defects) for i in range(n)])


def surface_image(texture: np.ndarray, seed: int, index: int, max_defects: int = 3) -> SurfaceImage:
    rng = random.Random(f"surface:{seed}:{index}")
    size = texture.shape[0]
    canvas = texture.copy()
    defects: list[Defect] = []
    count = 0 if rng.random() < 0.25 else rng.randint(1, max_defects)
    for _ in range(count):
        for _attempt in range(30):  # place it apart from the others, so each box is one defect
            kind = rng.choice(DEFECT_TYPES)
            mask, severity = _DRAW[kind](rng, size)
            box = _box(mask)
            if box and all(_apart(box, d.box, margin=6) for d in defects):
                canvas += _DELTA[kind](rng) * mask
                defects.append(Defect(kind, box, severity))
                break
    return SurfaceImage(_photograph(canvas, np.random.default_rng([seed, 2, index])), defects)


def surface_samples(n: int, seed: int = 0, split: str = "train", lang: Language = "en", size: int = 128
                    ) -> list[Sample]:
    """Grounding samples: each image with defects, its defects named and boxed (clean images are left out)."""
    items = surface_set(n, seed, split, size).images
    samples = []
    for i, item in enumerate(items):
        if not item.defects:
            continue
        names = [(_NAMES_ZH[d.type] if lang == "zh" else d.type) for d in item.defects]
        text = ("缺陷：" + "，".join(names)) if lang == "zh" else "defects: " + ", ".join(names)
        regions = [[*d.box, name] for d, name in zip(item.defects, names)]
        image = ImageRef("png", encode_image(item.image))
        samples.append(Sample(f"surface-{seed}-{split}-{i:06d}", "grounding", [image], text=text, regions=regions,
                              meta=_meta(seed, split, i, lang, item)).validate())
    return samples


def crop_samples(n: int, seed: int = 0, split: str = "train", lang: Language = "en", size: int = 128,
                 crop: int = 48) -> list[Sample]:
    """`n` vqa samples: a crop around a defect (or, from a defect-free image, a clean crop) answering the
    inspection prompt with type, severity and likely cause, as `question`/`answers` and as one LLaVA
    exchange (`meta["dataset"] = "surface_defects"`), so it serves as an instruction dataset as is."""
    samples: list[Sample] = []
    images = 0
    while len(samples) < n:  # about 1.5 crops per image; draw more images until there are n
        items = surface_set(images + n, seed, split, size).images[images:]
        for i, item in enumerate(items, images):
            middle = (size // 2 - 4, size // 2 - 4, size // 2 + 4, size // 2 + 4)
            for j, (box, defect) in enumerate([(d.box, d) for d in item.defects] or [(middle, None)]):
                samples.append(_crop_sample(item, box, defect, crop, lang, f"{seed}-{split}-{i:06d}-{j}",
                                            _meta(seed, split, i, lang, item)))
        images += n
    return samples[:n]


def _crop_sample(item: SurfaceImage, box: tuple[int, int, int, int], defect: Defect | None, crop: int,
                 lang: Language, key: str, meta: dict) -> Sample:
    question, answer = INSPECTION_PROMPTS[lang], defect_description(defect, lang)
    image = Image.fromarray(np.ascontiguousarray(crop_around(item.pixels, box, crop)))
    meta.update(dataset="surface_defects", question_type=defect.type if defect else "none")
    turns = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"}, {"from": "gpt", "value": answer}]
    return Sample(f"surface-crop-{key}", "vqa", [ImageRef("png", encode_image(image))], question=question,
                  answers=[answer], conversations=turns, meta=meta).validate()


def defect_description(defect: Defect | None, lang: Language = "en") -> str:
    """The reference answer to the inspection prompt for `defect` (None: a clean crop)."""
    if defect is None:
        return _NO_DEFECT[lang]
    cause_en, cause_zh = _CAUSES[defect.type]
    if lang == "zh":
        return f"缺陷类型：{_NAMES_ZH[defect.type]}；严重程度：{_NAMES_ZH[defect.severity]}；可能成因：{cause_zh}。"
    return f"Defect type: {defect.type}; severity: {defect.severity}; likely cause: {cause_en}."


def read_defect_type(text: str) -> str | None:
    """The defect type a description names (either language): a type, `none` for a clean crop, or None."""
    lowered = text.lower()
    if "no defect" in lowered or "无缺陷" in text:
        return "none"
    named = [t for t in DEFECT_TYPES if t in lowered or _NAMES_ZH[t] in text]
    return named[0] if len(named) == 1 else None


# --- drawing -----------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed metal: streaks along x, a faint lighting gradient. Float gray levels [H, W]."""
    streaks = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=6, sigmaY=0.6)
    streaks *= 12 / max(float(streaks.std()), 1e-6)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    light = 15 * (xx / size - 0.5) + 10 * (yy / size - 0.5) * rng.uniform(-1, 1)
    return float(rng.uniform(120, 150)) + streaks + light


def _photograph(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise, a small exposure change and a steel-blue tint -> uint8 RGB."""
    gray = canvas * rng.uniform(0.97, 1.03) + rng.normal(0, 2.5, canvas.shape)
    tint = np.array([0.97, 1.0, 1.04], dtype=np.float32)
    return np.clip(gray[..., None] * tint, 0, 255).round().astype(np.uint8)


def _scratch(rng: random.Random, size: int) -> tuple[np.ndarray, str]:
    length = rng.uniform(0.15, 0.4) * size
    angle = rng.uniform(0, math.pi)
    cx, cy = rng.uniform(0.15, 0.85) * size, rng.uniform(0.15, 0.85) * size
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    mask = np.zeros((size, size), np.float32)
    cv2.line(mask, (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy)), 1.0, 1, cv2.LINE_AA)
    return mask, _severity(length / size, (0.22, 0.32))


def _spot(rng: random.Random, size: int) -> tuple[np.ndarray, str]:
    radius = rng.uniform(0.025, 0.06) * size
    center = (round(rng.uniform(0.1, 0.9) * size), round(rng.uniform(0.1, 0.9) * size))
    axes = (max(2, round(radius)), max(2, round(radius * rng.uniform(0.6, 1.0))))
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, center, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(mask, (0, 0), 1.0), _severity(radius / size, (0.035, 0.05))


def _crack(rng: random.Random, size: int) -> tuple[np.ndarray, str]:
    x, y = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size
    heading = rng.uniform(0, 2 * math.pi)
    points = [(x, y)]
    steps = rng.randint(6, 14)
    for _ in range(steps):
        heading += rng.uniform(-0.7, 0.7)
        x = min(max(x + math.cos(heading) * size * 0.03, 2), size - 3)
        y = min(max(y + math.sin(heading) * size * 0.03, 2), size - 3)
        points.append((x, y))
    mask = np.zeros((size, size), np.float32)
    cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1.0, 1, cv2.LINE_AA)
    return mask, _severity(steps, (9, 12))


_DRAW = {"scratch": _scratch, "spot": _spot, "crack": _crack}
_DELTA = {  # intensity change where the mask is 1
    "scratch": lambda rng: rng.choice((-1, 1)) * rng.uniform(45, 65),
    "spot": lambda rng: -rng.uniform(45, 70),
    "crack": lambda rng: -rng.uniform(60, 85),
}


def _severity(value: float, cuts: tuple[float, float]) -> str:
    return SEVERITIES[(value >= cuts[0]) + (value >= cuts[1])]


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask > 0.25)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


def _meta(seed: int, split: str, index: int, lang: str, item: SurfaceImage) -> dict:
    return {"source": "synthetic-surface-defects", "seed": seed, "split": split, "index": index, "lang": lang,
            "defects": [{"type": d.type, "box": list(d.box), "severity": d.severity} for d in item.defects]}
