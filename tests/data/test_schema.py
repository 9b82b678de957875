import json
import re

import pytest

from vlstack.data.schema import KINDS, ImageRef, Sample, image_name
from vlstack.errors import DataError


def caption(**changes) -> Sample:
    fields = {"id": "s1", "kind": "caption", "images": [ImageRef("jpg", b"\xff\xd8")], "text": "a red circle"}
    return Sample(**{**fields, **changes})


VALID = {
    "caption": caption(),
    "interleaved": Sample("i", "interleaved", [ImageRef("0.png"), ImageRef("1.jpg")], text="<image> one <image> two"),
    "vqa": Sample("q", "vqa", [ImageRef("png")], question="What colour?", answers=["red", "red"]),
    "document": Sample("d", "document", [ImageRef("png")], text="INVOICE\nTotal: $3.00"),
    "chart": Sample("c", "chart", [ImageRef("png")], question="Highest?", answers=["Apple"]),
    "grounding": Sample("g", "grounding", [ImageRef("png")], text="a cat", regions=[[0, 0, 10, 12.5, "a cat"]]),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_validates_and_round_trips_through_json(kind):
    sample = VALID[kind].validate()
    data = json.loads(json.dumps(sample.to_dict()))
    again = Sample.from_dict(data, {ref.name: ref.data for ref in sample.images if ref.data is not None})
    assert again == sample


def test_to_dict_writes_image_names_not_bytes_and_skips_empty_fields():
    assert caption().to_dict() == {"id": "s1", "kind": "caption", "images": ["jpg"], "text": "a red circle"}


@pytest.mark.parametrize("sample, field", [
    (caption(id=""), "'id'"),
    (caption(kind="video"), "'kind'"),
    (caption(images=[]), "'images'"),
    (caption(images=[ImageRef("photo.gif.exe")]), "'images[0]'"),
    (caption(images=[ImageRef("0.png"), ImageRef("0.png")]), "'images'"),
    (caption(text=" "), "'text'"),
    (caption(question="Why?"), "'answers'"),
    (caption(answers=[""]), "'answers'"),
    (caption(meta={"bad": {1, 2}}), "'meta'"),
    (caption(conversations=[{"from": "human", "value": "<image> hi"}]), "'conversations'"),
    (caption(conversations=[{"from": "user", "value": "<image>"}, {"from": "gpt", "value": "x"}]),
     "'conversations[0]'"),
    (caption(conversations=[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]), "'conversations'"),
    (Sample("i", "interleaved", [ImageRef("png")], text="no marker"), "'text'"),
    (Sample("q", "vqa", [ImageRef("png")]), "'question'"),
    (Sample("d", "document", [ImageRef("png")]), "'text'"),
    (Sample("g", "grounding", [ImageRef("png")], text="x"), "'regions'"),
    (Sample("g", "grounding", [ImageRef("png")], regions=[[5, 0, 4, 9, "cat"]]), "'regions[0]'"),
    (Sample("g", "grounding", [ImageRef("png")], regions=[[0, 0, 4, 9]]), "'regions[0]'"),
    (Sample("g", "grounding", [ImageRef("png")], regions=[[0, 0, 4, 9, " "]]), "'regions[0]'"),
])
def test_validation_names_the_bad_field(sample, field):
    with pytest.raises(DataError, match=re.escape(f"field {field}")):
        sample.validate()


def test_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(DataError, match=r"unknown field\(s\) \['caption'\]"):
        Sample.from_dict({"id": "x", "kind": "caption", "images": ["jpg"], "caption": "typo"})
    with pytest.raises(DataError, match="field 'kind' is missing"):
        Sample.from_dict({"id": "x", "images": ["jpg"]})
    with pytest.raises(DataError, match="field 'images'"):
        Sample.from_dict({"id": "x", "kind": "caption", "images": "jpg", "text": "t"})


def test_image_names_follow_the_webdataset_suffix_convention():
    assert image_name(0, 1, ".JPG") == "jpg"
    assert [image_name(i, 2, "png") for i in range(2)] == ["0.png", "1.png"]
