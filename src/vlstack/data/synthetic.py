"""Procedural shape scenes: coloured circles, squares and triangles with true captions.

Every scene is a pure function of (seed, index), so a corpus is reproducible and
train / held-out splits are just different seeds. Captions exist in English and
Chinese and say exactly what is drawn (colour, shape, left/right placement), which
makes retrieval and VQA on them checkable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
COLORS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
SHAPES_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}

Language = Literal["en", "zh"]


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    box: tuple[int, int, int, int]
    """Pixel box (x0, y0, x1, y1) of the drawn shape."""
    place: str
    """Where the object is: left, right or center."""


@dataclass
class ShapeScene:
    image: Image.Image
    caption: str
    objects: list[SceneObject]


def shape_scene(seed: int, index: int, image_size: int = 64, lang: Language = "en") -> ShapeScene:
    """Scene `index` of the corpus `seed`: one centred object, or two side by side."""
    rng = random.Random(seed * 1_000_003 + index)
    background = tuple(rng.randint(225, 250) for _ in range(3))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    places = ["center"] if rng.random() < 0.3 else ["left", "right"]
    objects = []
    for place in places:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        box = _place_box(rng, image_size, place)
        _draw_shape(draw, shape, box, COLORS[color])
        objects.append(SceneObject(shape=shape, color=color, box=box, place=place))
    return ShapeScene(image=image, caption=caption_for(objects, lang), objects=objects)


def shape_scenes(n: int, seed: int, image_size: int = 64, lang: Language = "en") -> list[ShapeScene]:
    return [shape_scene(seed, i, image_size, lang) for i in range(n)]


def caption_for(objects: list[SceneObject], lang: Language = "en") -> str:
    """The true caption of a scene's objects."""
    if lang == "zh":
        places = {"left": "左边是", "right": "右边是", "center": "中间是"}
        return "，".join(f"{places[o.place]}一个{COLORS_ZH[o.color]}的{SHAPES_ZH[o.shape]}" for o in objects)
    places = {"left": "on the left", "right": "on the right", "center": "in the center"}
    return " and ".join(f"a {o.color} {o.shape} {places[o.place]}" for o in objects)


def _place_box(rng: random.Random, size: int, place: str) -> tuple[int, int, int, int]:
    """A square box of random size inside the half (or middle) of the image named by `place`."""
    side = rng.randint(size * 9 // 32, size * 13 // 32)
    lo, hi = {"left": (0, size // 2), "right": (size // 2, size), "center": (size // 4, size * 3 // 4)}[place]
    margin = max(1, size // 32)
    x0 = rng.randint(lo + margin, max(lo + margin, hi - side - margin))
    y0 = rng.randint(margin, size - side - margin)
    return (x0, y0, x0 + side, y0 + side)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
