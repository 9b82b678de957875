"""A synthetic hallucination suite: shape scenes with their objects, the scene lexicon, and for every scene
a faithful caption and a hallucinated one (one object's colour or shape changed to one the image lacks).

Written in the format `vlstack.eval.hallucination.suite` reads, so the evaluation meets these scenes the
way it meets a user's own suite. Scenes come from their own index stream (`SCENE_STREAM`), which no
pretraining corpus or benchmark suite draws.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

from vlstack.eval.hallucination.entities import Lexicon
from vlstack.eval.hallucination.suite import Scene, write_suite
from vlstack.eval.hallucination.suite import SceneObject as SuiteObject
from vlstack.synthetic.scenes import (
    COLORS,
    COLORS_ZH,
    PLACES_EN,
    PLACES_ZH,
    SHAPES,
    SHAPES_ZH,
    SceneObject,
    caption_for,
    shape_scene,
    split_seed,
)

SCENE_STREAM = 5_000_000
"""Scene-index offset of the hallucination scenes."""
SHAPE_SYNONYMS = {"circle": ["disc", "disk", "dot", "圆圈", "圆"], "square": ["方块"], "triangle": ["三角"]}
"""Synonyms of the scene shapes beyond their names (English plurals are derived). "方形" is left out:
it is also the tail of "长方形" (rectangle)."""
COLOR_SYNONYMS = {"red": ["crimson", "scarlet", "红"], "green": ["绿"], "blue": ["蓝"], "yellow": ["黄"],
                  "purple": ["violet", "紫"], "orange": ["橘色", "橘黄色", "橙"]}
PLACE_SYNONYMS = {"left": ["左侧", "左面"], "right": ["右侧", "右面"], "center": ["centre", "middle", "中央", "中心"]}


def scene_lexicon() -> Lexicon:
    """The shape scenes' vocabulary: shapes, colours and places in English and Chinese, with synonyms."""
    return Lexicon({
        "object": [[s, SHAPES_ZH[s], *SHAPE_SYNONYMS.get(s, [])] for s in SHAPES],
        "attribute": [[c, COLORS_ZH[c], *COLOR_SYNONYMS.get(c, [])] for c in COLORS],
        "place": [[p, PLACES_ZH[p], *PLACE_SYNONYMS.get(p, [])] for p in PLACES_EN],
    }, place_phrases=PLACES_EN)


def hallucinate(objects: Sequence[SceneObject], rng: random.Random) -> tuple[list[SceneObject], int, str]:
    """The objects with one of them changed to something the image does not show: its colour for a
    colour no object has, or its shape for a shape no object has (half each). Returns the new
    objects, the index changed and what changed ("color" or "shape")."""
    index = rng.randrange(len(objects))
    colors = [c for c in COLORS if c not in {o.color for o in objects}]
    shapes = [s for s in SHAPES if s not in {o.shape for o in objects}]
    kind = "color" if not shapes or rng.random() < 0.5 else "shape"
    target = objects[index]
    changed = (dataclasses.replace(target, color=rng.choice(colors)) if kind == "color"
               else dataclasses.replace(target, shape=rng.choice(shapes)))
    return [changed if i == index else o for i, o in enumerate(objects)], index, kind


def write_hallucination_suite(folder: str | Path, calibration_scenes: int = 200, test_scenes: int = 200,
                              pope_scenes: int = 50, pope_sample_num: int = 2, languages: Sequence[str] = ("en", "zh"),
                              seed: int = 0) -> Path:
    """`calibration_scenes` val scenes, and test scenes enough for `test_scenes` (detector, CHAIR) and for
    `pope_scenes` with `pope_sample_num` different objects (POPE), with captions in `languages`."""
    folder = Path(folder)
    scenes = _split(folder, "val", calibration_scenes, languages, seed)
    needed, distinct = 0, 0
    while needed < test_scenes or distinct < pope_scenes:
        scene = shape_scene(split_seed(seed, "test"), SCENE_STREAM + needed)
        distinct += len({(o.color, o.shape) for o in scene.objects}) >= pope_sample_num
        needed += 1
    scenes += _split(folder, "test", needed, languages, seed)
    return write_suite(folder, scene_lexicon(), scenes)


def _split(folder: Path, split: str, n: int, languages: Sequence[str], seed: int) -> list[Scene]:
    rng = random.Random(f"hallucinate:{seed}:{split}")
    (folder / split).mkdir(parents=True, exist_ok=True)
    scenes = []
    for index in range(n):
        scene = shape_scene(split_seed(seed, split), SCENE_STREAM + index)
        changed, which, kind = hallucinate(scene.objects, rng)
        image = f"{split}/scene-{index:06d}.png"
        scene.image.save(folder / image)
        objects = [SuiteObject(o.shape, (o.color,), o.place) for o in scene.objects]
        captions = {lang: (caption_for(scene.objects, lang), caption_for(changed, lang)) for lang in languages}
        scenes.append(Scene(image, split, objects, captions, which, kind))
    return scenes
