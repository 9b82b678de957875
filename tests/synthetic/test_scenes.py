import io

import pytest
from PIL import Image

from vlstack.data.schema import IMAGE_TOKEN, KINDS
from vlstack.errors import DataError
from vlstack.synthetic.corpus import make_sample
from vlstack.synthetic.fonts import cjk_font_path, get_font
from vlstack.synthetic.scenes import COLORS_ZH, SHAPES_ZH, caption_for, shape_scene, split_seed

LANGS = ["en", "zh"]
SMALL = {"document": 128, "chart": 128}


def test_the_packaged_cjk_font_has_chinese_glyphs(monkeypatch, tmp_path):
    """The font ships with the install (no system font needed) and draws each character, not one "tofu" box."""
    monkeypatch.delenv("VLSTACK_CJK_FONT", raising=False)
    assert "mplfonts" in str(cjk_font_path())
    font = get_font("zh", 24)
    masks = {char: bytes(font.getmask(char)) for char in "中国圆形"}
    assert all(masks.values()) and len(set(masks.values())) == 4
    monkeypatch.setenv("VLSTACK_CJK_FONT", str(tmp_path / "missing.ttf"))
    with pytest.raises(DataError, match="VLSTACK_CJK_FONT"):
        cjk_font_path()


def sample(kind, index, seed=0, lang="en"):
    return make_sample(kind, seed, index, lang, SMALL.get(kind))


def fingerprint(s):
    return s.to_dict(), [ref.data for ref in s.images]


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("kind", KINDS)
def test_each_generator_is_deterministic_valid_and_seed_dependent(kind, lang):
    first = [sample(kind, i, lang=lang) for i in range(4)]
    assert [fingerprint(s) for s in first] == [fingerprint(sample(kind, i, lang=lang)) for i in range(4)]
    other = [sample(kind, i, seed=1, lang=lang) for i in range(4)]
    assert [s.images[0].data for s in first] != [s.images[0].data for s in other]
    for s in first:
        s.validate()
        assert s.kind == kind and s.meta["lang"] == lang
        for ref in s.images:
            assert Image.open(io.BytesIO(ref.data)).mode == "RGB"


def test_splits_draw_from_disjoint_seeds():
    seeds = {split_seed(seed, split) for seed in range(5) for split in ("train", "val", "test")}
    assert len(seeds) == 15
    train = {sample("caption", i, split_seed(0, "train")).id for i in range(5)}
    held_out = {sample("caption", i, split_seed(0, "test")).id for i in range(5)}
    assert not train & held_out
    with pytest.raises(DataError, match="unknown split"):
        split_seed(0, "dev")


def test_shape_scene_api_is_unchanged():
    scene = shape_scene(0, 0)
    assert scene.image.size == (64, 64) and scene.caption == caption_for(scene.objects)


def test_vqa_answers_follow_from_the_drawn_objects():
    for i in range(40):
        s = sample("vqa", i)
        objects = s.meta["objects"][0]
        answer, kind = s.answers[0], s.meta["question_type"]
        if kind == "count":
            assert answer == str(len(objects))
        elif kind == "color":
            assert answer in {o["color"] for o in objects}
        elif kind == "shape":
            assert answer in {o["shape"] for o in objects}
        elif kind == "position":
            assert answer in {o["place"] for o in objects}
        else:
            assert int(answer) == sum(o["color"] in s.question for o in objects)


def test_chinese_vqa_answers_are_chinese_words():
    words = set(COLORS_ZH.values()) | set(SHAPES_ZH.values()) | {"左边", "右边", "中间"}
    for i in range(20):
        answer = sample("vqa", i, lang="zh").answers[0]
        assert answer in words or answer.isdigit()


def test_grounding_phrases_are_spans_of_the_caption_and_boxes_fit():
    for i in range(10):
        s = sample("grounding", i)
        for x0, y0, x1, y1, phrase in s.regions:
            assert phrase in s.text and 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


def test_interleaved_text_has_one_marker_per_image():
    for i in range(10):
        s = sample("interleaved", i)
        assert s.text.count(IMAGE_TOKEN) == len(s.images) in (2, 3)


def test_document_answers_are_drawn_values_and_totals_add_up():
    for i in range(12):
        s = sample("document", i)
        assert s.answers[0] in s.text
        if s.meta["items"]:
            total = sum(float(price[1:]) for _, price in s.meta["items"])
            assert s.meta["fields"]["total"] == f"${total:.2f}"


def test_chart_answers_follow_from_the_values():
    for i in range(20):
        s = sample("chart", i)
        values, kind, answer = s.meta["values"], s.meta["question_type"], s.answers[0]
        expected = {"max": max(values, key=values.get), "min": min(values, key=values.get),
                    "sum": str(sum(values.values()))}
        if kind in expected:
            assert answer == expected[kind]
        elif kind == "value":
            assert int(answer) == next(v for name, v in values.items() if name in s.question)
        else:
            assert int(answer) in {abs(a - b) for a in values.values() for b in values.values()}
        assert all(f"{name} | {value}" in s.text for name, value in values.items())


def test_unknown_kind_and_language_are_errors():
    with pytest.raises(DataError, match="unknown kind 'video'"):
        make_sample("video", 0, 0)
    with pytest.raises(DataError, match="unknown lang"):
        make_sample("caption", 0, 0, "fr")
