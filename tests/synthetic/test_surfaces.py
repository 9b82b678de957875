from collections import Counter

import numpy as np
import pytest

from vlstack.apps.inspection import INSPECTION_PROMPTS
from vlstack.synthetic.instructions import instruction_samples
from vlstack.synthetic.surfaces import (
    DEFECT_TYPES,
    crop_samples,
    read_defect_type,
    surface_samples,
    surface_set,
)


@pytest.fixture(scope="module")
def line():
    return surface_set(40, seed=0, split="train")


def test_sets_are_reproducible_and_splits_differ(line):
    again = surface_set(40, seed=0, split="train")
    assert np.array_equal(line.reference, again.reference)
    assert all(np.array_equal(a.pixels, b.pixels) and a.defects == b.defects for a, b in zip(line.images, again.images))
    assert not np.array_equal(line.reference, surface_set(1, seed=0, split="test").reference)


def test_every_type_occurs_and_some_parts_are_clean(line):
    types = Counter(d.type for item in line.images for d in item.defects)
    assert set(types) == set(DEFECT_TYPES) and min(types.values()) >= 10
    clean = sum(not item.defects for item in line.images)
    assert 3 <= clean <= 20


def test_boxes_hold_the_defects_and_do_not_overlap(line):
    for item in line.images:
        difference = np.abs(item.pixels.astype(float) - line.reference.astype(float)).mean(axis=2)
        inside = np.zeros(difference.shape, bool)
        for d in item.defects:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            assert difference[y0:y1, x0:x1].max() > 30  # the drawn defect is in its box
            assert not inside[y0:y1, x0:x1].any()  # boxes do not overlap
            inside[y0:y1, x0:x1] = True
        assert difference[~inside].max() < 25  # outside the boxes: sensor noise and exposure only


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_crop_answers_name_the_true_type(lang):
    samples = crop_samples(30, seed=1, split="val", lang=lang)
    assert len(samples) == 30 and len({s.id for s in samples}) == 30
    for sample in samples:
        assert sample.question == INSPECTION_PROMPTS[lang] and sample.meta["dataset"] == "surface_defects"
        assert read_defect_type(sample.answers[0]) == sample.meta["question_type"]
    assert {s.meta["question_type"] for s in samples} == {*DEFECT_TYPES, "none"}


def test_grounding_samples_box_every_defect():
    samples = surface_samples(20, seed=0, split="test")
    assert samples and all(len(s.regions) == len(s.meta["defects"]) for s in samples)
    assert [r[4] for r in samples[0].regions] == [d["type"] for d in samples[0].meta["defects"]]
    assert len(instruction_samples("surface_defects", 7, seed=0, split="test")) == 7
    assert read_defect_type("maybe a scratch or a crack") is None
