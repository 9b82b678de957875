"""Procedural shape scenes: coloured circles, squares and triangles with true captions.

Every scene is a pure function of (seed, index), so a corpus is reproducible and
train / held-out splits are just different seeds. Captions exist in English and
Chinese and say exactly what is drawn (colour, shape, left/right placement), which
makes retrieval and VQA on them checkable. The caption, vqa, grounding and
interleaved samples of the synthetic corpus are built from these scenes; documents
and charts live in `documents.py` and `charts.py`.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw

from vlstack.data.schema import IMAGE_TOKEN, KINDS, ImageRef, Sample, image_name
from vlstack.errors import DataError

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


# --- Samples of the shape-scene kinds: caption, vqa, grounding, interleaved ---------------------------

SPLITS = ("train", "val", "test")
PLACES_EN = {"left": "on the left", "right": "on the right", "center": "in the center"}
PLACES_ZH = {"left": "左边", "right": "右边", "center": "中间"}


def split_seed(seed: int, split: str) -> int:
    """The seed of `split`: every (seed, split) pair draws its own random streams, so splits never share a draw."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return seed * len(SPLITS) + SPLITS.index(split)


def encode_image(image: Image.Image, fmt: str = "png", **save_args) -> bytes:
    """The encoded file of `image` (`fmt`: png, jpeg, ...)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if fmt in ("jpg", "jpeg") else fmt.upper(), **save_args)
    return buffer.getvalue()


def caption_sample(seed: int, index: int, lang: Language = "en", image_size: int = 64) -> Sample:
    scene = _scene("caption", seed, index, image_size, lang)
    return _scene_sample("caption", seed, index, lang, [scene], text=scene.caption)


def vqa_sample(seed: int, index: int, lang: Language = "en", image_size: int = 64) -> Sample:
    """A question on colour, shape, count or position that the scene answers exactly."""
    scene = _scene("vqa", seed, index, image_size, lang)
    rng = random.Random(f"vqa:{seed}:{index}")
    kind, question, answer = _question(scene.objects, rng, lang)
    sample = _scene_sample("vqa", seed, index, lang, [scene], question=question, answers=[answer])
    sample.meta["question_type"] = kind
    return sample


def grounding_sample(seed: int, index: int, lang: Language = "en", image_size: int = 64) -> Sample:
    """The caption with a box for each object phrase (each phrase is a span of the caption)."""
    scene = _scene("grounding", seed, index, image_size, lang)
    regions = [[*o.box, _phrase(o, lang)] for o in scene.objects]
    return _scene_sample("grounding", seed, index, lang, [scene], text=scene.caption, regions=regions)


def interleaved_sample(seed: int, index: int, lang: Language = "en", image_size: int = 64) -> Sample:
    """Two or three scenes, each followed by its caption, then a true comparison of their shape counts."""
    count = random.Random(f"interleaved:{seed}:{index}").choice((2, 3))
    scenes = [_scene("interleaved", seed, index * 3 + j, image_size, lang) for j in range(count)]
    if lang == "zh":
        parts = [f"图{j + 1}：{IMAGE_TOKEN}{s.caption}。" for j, s in enumerate(scenes)]
    else:
        parts = [f"Picture {j + 1}: {IMAGE_TOKEN} {s.caption}." for j, s in enumerate(scenes)]
    parts.append(_comparison(len(scenes[0].objects), len(scenes[-1].objects), len(scenes), lang))
    text = ("" if lang == "zh" else " ").join(parts)
    return _scene_sample("interleaved", seed, index, lang, scenes, text=text)


def _scene(kind: str, seed: int, index: int, image_size: int, lang: Language) -> ShapeScene:
    """Each kind draws its scenes from its own stream, so corpora of different kinds share no image."""
    return shape_scene(seed * len(KINDS) + KINDS.index(kind), index, image_size, lang)


def _scene_sample(kind: str, seed: int, index: int, lang: Language, scenes: list[ShapeScene], **fields) -> Sample:
    images = [ImageRef(image_name(j, len(scenes), "png"), encode_image(s.image)) for j, s in enumerate(scenes)]
    objects = [[{"shape": o.shape, "color": o.color, "place": o.place, "box": list(o.box)} for o in s.objects]
               for s in scenes]
    meta = {"source": "synthetic", "seed": seed, "index": index, "lang": lang, "objects": objects}
    return Sample(f"{kind}-{seed}-{index:06d}", kind, images, meta=meta, **fields)


def _phrase(o: SceneObject, lang: Language) -> str:
    return f"一个{COLORS_ZH[o.color]}的{SHAPES_ZH[o.shape]}" if lang == "zh" else f"a {o.color} {o.shape}"


def _question(objects: list[SceneObject], rng: random.Random, lang: Language) -> tuple[str, str, str]:
    """(question type, question, answer); position questions only name objects that are unique in the scene."""
    zh = lang == "zh"
    target = rng.choice(objects)
    unique = [(o.color, o.shape) for o in objects].count((target.color, target.shape)) == 1
    kinds = ["color", "shape", "count", "count_color"] + (["position"] * 2 if unique else [])
    kind = rng.choice(kinds)
    where = PLACES_ZH[target.place] if zh else PLACES_EN[target.place]
    if kind == "color":
        q = f"{where}的形状是什么颜色？" if zh else f"What color is the shape {where}?"
        return kind, q, COLORS_ZH[target.color] if zh else target.color
    if kind == "shape":
        q = f"{where}是什么形状？" if zh else f"What shape is {where}?"
        return kind, q, SHAPES_ZH[target.shape] if zh else target.shape
    if kind == "count":
        return kind, "图中有几个形状？" if zh else "How many shapes are there?", str(len(objects))
    if kind == "count_color":
        color = rng.choice(list(COLORS))
        q = f"图中有几个{COLORS_ZH[color]}的形状？" if zh else f"How many {color} shapes are there?"
        return kind, q, str(sum(o.color == color for o in objects))
    if zh:
        return kind, f"{COLORS_ZH[target.color]}的{SHAPES_ZH[target.shape]}在哪里？", PLACES_ZH[target.place]
    return kind, f"Where is the {target.color} {target.shape}?", target.place


def _comparison(first: int, last: int, count: int, lang: Language) -> str:
    if lang == "zh":
        if first == last:
            return f"图1和图{count}的形状一样多。"
        return f"图1的形状比图{count}{'多' if first > last else '少'}。"
    if first == last:
        return f"Picture 1 and picture {count} have the same number of shapes."
    return f"Picture 1 has {'more' if first > last else 'fewer'} shapes than picture {count}."
