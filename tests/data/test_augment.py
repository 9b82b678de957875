from __future__ import annotations

import colorsys
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vlstack.data.augment import (
    GEOMETRIC_OPS,
    HUE_OPS,
    ORIENTATION_OPS,
    AugmentConfig,
    GuardedRandAugment,
    WordGroups,
    augment_image,
    augment_text,
    default_synonyms,
    excluded_ops,
    names_color,
    names_direction,
)

RED = (220, 40, 40)


def square_image(box=(16, 16, 47, 47), fill=RED, background=(240, 238, 235)) -> Image.Image:
    image = Image.new("RGB", (64, 64), background)
    ImageDraw.Draw(image).rectangle(box, fill=fill)
    return image


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- image: determinism ----------------------------------------------------------------------


def test_image_augmentation_is_a_function_of_the_generator():
    image, texts = square_image(), ["a square"]
    first = augment_image(image, texts, generator(7))
    assert np.array_equal(np.asarray(first), np.asarray(augment_image(image, texts, generator(7))))
    outputs = {np.asarray(augment_image(image, texts, generator(s))).tobytes() for s in range(8)}
    assert len(outputs) > 4


def test_global_torch_rng_is_left_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    augment_image(square_image(), ["a square"], generator(0))
    assert torch.equal(torch.rand(3), expected)


# --- image: guards ---------------------------------------------------------------------------


def hue_degrees(image: Image.Image) -> float:
    r, g, b = np.asarray(image, dtype=np.float64)[26:38, 26:38].reshape(-1, 3).mean(axis=0) / 255
    hue, saturation, _ = colorsys.rgb_to_hsv(r, g, b)
    return hue * 360 if saturation > 0.25 else float("nan")  # grey has no hue: counts as changed


def hue_kept(image: Image.Image) -> bool:
    hue = hue_degrees(image)
    return min(hue, 360 - hue) < 20  # still red


def test_colour_words_keep_hue():
    image = square_image()
    assert all(hue_kept(augment_image(image, ["a red square"], generator(s))) for s in range(40))
    # the guard is what keeps it: without colour words, some augmentations do change the hue
    assert not all(hue_kept(augment_image(image, ["a square"], generator(s))) for s in range(40))


def red_centroid_x(image: Image.Image) -> float:
    pixels = np.asarray(image, dtype=np.int32)
    redness = pixels[..., 0] - pixels[..., 1:].mean(axis=-1)  # [H, W]
    _, xs = np.nonzero(redness > 60)
    return float(xs.mean())


def test_direction_words_prevent_flips():
    image = square_image(box=(4, 20, 23, 43))  # on the left
    cfg = AugmentConfig(hflip_p=1.0)
    texts = ["a red square on the left"]
    assert all(red_centroid_x(augment_image(image, texts, generator(s), cfg)) < 32 for s in range(20))
    assert red_centroid_x(augment_image(image, ["a red square"], generator(0), cfg)) > 32  # flips otherwise


def square_edges_kept(image: Image.Image) -> bool | None:
    """Whether the square's left/right edges are still at columns 16/47 (within the one pixel Sharpness
    may soften); None when the row lost all contrast (e.g. Equalize then Solarize: both greys to black)."""
    row = np.asarray(image.convert("L"), dtype=np.int32)[32]
    if np.ptp(row) < 40:
        return None
    left, right = sorted(np.argsort(np.abs(np.diff(row)))[-2:].tolist())  # the two strongest changes
    return abs(left - 15) <= 1 and abs(right - 47) <= 1


def test_boxes_forbid_every_geometric_operation():
    image = square_image(fill=(90, 90, 90), background=(200, 200, 200))
    cfg = AugmentConfig(hflip_p=1.0)
    kept = [square_edges_kept(augment_image(image, ["a square"], generator(s), cfg, has_boxes=True)) for s in range(20)]
    assert False not in kept and kept.count(True) >= 15
    moved = [square_edges_kept(augment_image(image, ["a square"], generator(s), cfg)) for s in range(20)]
    assert False in moved  # without boxes, shears and translations do move it


def test_excluded_operation_sets():
    assert excluded_ops(["a red square on the left"]) == HUE_OPS | ORIENTATION_OPS
    assert excluded_ops(["左边是一个绿色的三角形"]) == HUE_OPS | ORIENTATION_OPS
    assert excluded_ops(["a square"], has_boxes=True) == GEOMETRIC_OPS
    assert excluded_ops(["bright bored shapes"]) == frozenset()  # no colour/direction word inside others
    assert GuardedRandAugment(HUE_OPS)._AUGMENTATION_SPACE.keys().isdisjoint(HUE_OPS)


def test_unknown_operation_names_fail_loudly():
    with pytest.raises(RuntimeError, match="no operations"):
        GuardedRandAugment(frozenset({"Hue"}))


# --- text ------------------------------------------------------------------------------------

ALWAYS = AugmentConfig(synonym_word_p=1.0, synonym_text_p=1.0)


def test_synonym_replacement_keeps_case_and_whole_words():
    table = WordGroups([["picture", "image"]])
    rng = random.Random(0)
    assert augment_text("Picture of a picture, pictures, picturesque", rng, ALWAYS, table=table) == (
        "Image of a image, pictures, picturesque"
    )


def test_chinese_synonyms_replaced():
    table = WordGroups([["图片", "图像"], ["左边", "左侧"]])
    assert augment_text("这张图片左边有一个圆形", random.Random(0), ALWAYS, table=table) == "这张图像左侧有一个圆形"


def test_labels_are_never_changed():
    text = "The picture shows the center"
    assert augment_text(text, random.Random(0), ALWAYS, label=True) == text


def test_protected_answers_stay_in_the_question():
    table = WordGroups([["center", "middle"], ["picture", "image"]])
    question = "Is the circle in the center of the picture?"
    out = augment_text(question, random.Random(0), ALWAYS, protected=["center"], table=table)
    assert out == "Is the circle in the center of the image?"


def test_replacement_rates_follow_the_config():
    rng = random.Random(0)
    text = "a picture"
    changed = sum(augment_text(text, rng) != text for _ in range(4000)) / 4000
    assert changed == pytest.approx(0.7 * 0.1, abs=0.015)


def test_text_augmentation_is_a_function_of_the_rng():
    texts = ["The picture shows a big object beside a small car."] * 20
    assert [augment_text(t, random.Random(5), ALWAYS) for t in texts] == [
        augment_text(t, random.Random(5), ALWAYS) for t in texts
    ]


def test_shipped_tables_keep_colour_and_direction_meaning():
    table = default_synonyms()
    assert {"picture", "图片", "bar chart"} <= table.synonyms.keys()
    for word, alternatives in table.synonyms.items():
        for alternative in alternatives:
            assert names_color([word]) == names_color([alternative]), (word, alternative)
            assert names_direction([word]) == names_direction([alternative]), (word, alternative)
