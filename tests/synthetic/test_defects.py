import io
import re
from collections import Counter

import numpy as np
import pytest
from PIL import ExifTags, Image

from vlstack.data.schema import IMAGE_TOKEN
from vlstack.errors import DataError
from vlstack.synthetic.defects import (
    BOMB_SIDE,
    DEFECT_TYPES,
    DUPLICATE_DEFECTS,
    DefectPlan,
    inject,
    plan_defects,
)
from vlstack.synthetic.scenes import caption_sample, interleaved_sample, vqa_sample


def make(index):
    return caption_sample(0, index, image_size=96)


def spoil(kind, base=5, source=2, maker=make):
    sample = maker(base)
    spoiled = inject(sample, DefectPlan(kind, source), maker, seed=0)
    spoiled.validate()
    assert spoiled.id == sample.id
    assert spoiled.meta["defects"][-1]["type"] == kind
    return sample, spoiled, spoiled.meta["defects"][-1]


def decode(sample):
    image = Image.open(io.BytesIO(sample.images[0].data))
    image.load()
    return image


def sharpness(image):
    gray = np.asarray(image.convert("L"), dtype=float)
    laplacian = gray[1:-1, :-2] + gray[1:-1, 2:] + gray[:-2, 1:-1] + gray[2:, 1:-1] - 4 * gray[1:-1, 1:-1]
    return laplacian.var()


def luhn_valid(number):
    digits = [int(d) for d in number if d.isdigit()][::-1]
    return sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits)) % 10 == 0


def cn_id_valid(number):
    weights = [2 ** (17 - i) % 11 for i in range(17)]  # the ISO 7064 MOD 11-2 weights, derived, not copied
    return len(number) == 18 and "10X98765432"[sum(int(d) * w for d, w in zip(number, weights)) % 11] == number[17]


def test_every_type_is_known_and_listed_once():
    assert len(DEFECT_TYPES) == len(set(DEFECT_TYPES)) == 19


def test_plan_deals_every_type_and_keeps_duplicates_behind_clean_originals():
    plans = plan_defects(400, 0.5, seed=3)
    assert len(plans) == 200 and 0 not in plans
    counts = Counter(p.type for p in plans.values())
    assert set(counts) == set(DEFECT_TYPES) and max(counts.values()) - min(counts.values()) <= 1
    for index, plan in plans.items():
        if plan.type in DUPLICATE_DEFECTS:
            assert plan.source < index and plan.source not in plans
    assert plan_defects(400, 0.5, seed=3) == plans != plan_defects(400, 0.5, seed=4)
    with pytest.raises(DataError, match="defect rate"):
        plan_defects(10, 1.5, 0)
    with pytest.raises(DataError, match="unknown defect type"):
        plan_defects(10, 0.5, 0, ("blurry",))


def test_injection_is_deterministic():
    for kind in DEFECT_TYPES:
        a, b = spoil(kind)[1], spoil(kind)[1]
        assert a.to_dict() == b.to_dict() and a.images[0].data == b.images[0].data


def test_blur_lowers_sharpness():
    clean, spoiled, record = spoil("blur")
    assert sharpness(decode(spoiled)) < 0.3 * sharpness(decode(clean)) and record["radius"] >= 2


def test_face_is_pasted_where_recorded():
    clean, spoiled, record = spoil("face")
    x0, y0, x1, y1 = record["box"]
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96 and (x1 - x0) >= 0.5 * 96
    before = np.asarray(decode(clean))[y0:y1, x0:x1].astype(int)
    after = np.asarray(decode(spoiled))[y0:y1, x0:x1].astype(int)
    assert np.abs(after - before).mean() > 20


def test_exif_carries_the_recorded_gps_position():
    _, spoiled, record = spoil("exif_gps")
    gps = decode(spoiled).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    degrees, minutes, seconds = gps[2]
    assert spoiled.images[0].name == "jpg"
    assert degrees + minutes / 60 + seconds / 3600 == pytest.approx(abs(record["lat"]), abs=1e-3)
    assert gps[1] == ("N" if record["lat"] >= 0 else "S")


@pytest.mark.parametrize("kind", ["corrupt_bytes", "truncated"])
def test_broken_files_do_not_decode(kind):
    clean, spoiled, record = spoil(kind)
    assert spoiled.images[0].data[:8] == clean.images[0].data[:8]  # still looks like a PNG
    if kind == "truncated":
        assert len(spoiled.images[0].data) == record["kept_bytes"] < record["of_bytes"]
    with pytest.raises(OSError):
        decode(spoiled)


def test_bomb_declares_a_huge_size():
    _, spoiled, record = spoil("bomb")
    assert record["declared"] == [BOMB_SIDE, BOMB_SIDE] and len(spoiled.images[0].data) < 10_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(spoiled.images[0].data))


@pytest.mark.parametrize("kind, mode, name", [("mode_cmyk", "CMYK", "jpg"), ("mode_16bit", "I;16", "png"),
                                              ("mode_alpha", "RGBA", "png")])
def test_odd_modes(kind, mode, name):
    _, spoiled, _ = spoil(kind)
    assert decode(spoiled).mode == mode and spoiled.images[0].name == name


def test_exact_duplicate_copies_the_original():
    _, spoiled, record = spoil("duplicate_exact", source=2)
    original = make(2)
    assert record["of"] == original.id
    assert spoiled.images[0].data == original.images[0].data and spoiled.text == original.text


def test_near_duplicate_looks_the_same_but_differs_in_bytes():
    _, spoiled, record = spoil("duplicate_near", source=2)
    original = make(2)
    assert record["of"] == original.id and spoiled.text == original.text
    assert spoiled.images[0].data != original.images[0].data
    near, orig = decode(spoiled).convert("RGB"), decode(original).convert("RGB").resize(decode(spoiled).size)
    assert np.abs(np.asarray(near, dtype=int) - np.asarray(orig, dtype=int)).mean() < 25


def test_mismatch_pairs_the_image_with_another_samples_text():
    clean, spoiled, record = spoil("mismatch", source=5)  # the sample itself is skipped as a donor
    donor_index = int(record["donor"].rsplit("-", 1)[1])
    assert donor_index != 5 and spoiled.text == make(donor_index).text != clean.text
    assert spoiled.images == clean.images and spoiled.meta["objects"] == clean.meta["objects"]


def test_gibberish_keeps_image_markers():
    clean, spoiled, _ = spoil("gibberish", maker=lambda i: interleaved_sample(0, i))
    assert spoiled.text.count(IMAGE_TOKEN) == clean.text.count(IMAGE_TOKEN)
    assert not set(spoiled.text.split()) - {IMAGE_TOKEN} & set(clean.text.split())


PII_CHECKS = {
    "pii_email": lambda v: re.fullmatch(r"[a-z.]+\d+@[a-z.]+\.[a-z]+", v),
    "pii_phone": lambda v: re.fullmatch(r"(\+1 \d{3}-|\(\d{3}\) |\d{3}\.)\d{3}[-.]\d{4}", v),
    "pii_cn_mobile": lambda v: re.fullmatch(r"1[3-9]\d{9}", re.sub(r"^\+86 | ", "", v)),
    "pii_cn_id": cn_id_valid,
    "pii_credit_card": lambda v: len(v.replace(" ", "")) == 16 and luhn_valid(v),
    "pii_ip": lambda v: all(0 <= int(o) <= 255 for o in v.split(".")) and v.split(".")[0] not in ("10", "127", "192"),
}


@pytest.mark.parametrize("kind", sorted(PII_CHECKS))
@pytest.mark.parametrize("base", range(6))
def test_pii_is_valid_and_sits_at_the_recorded_span(kind, base):
    _, spoiled, record = spoil(kind, base=base)
    start, end = record["span"]
    assert record["field"] == "text" and spoiled.text[start:end] == record["value"]
    assert PII_CHECKS[kind](record["value"])


def test_text_defects_hit_the_question_of_a_vqa_sample():
    clean, spoiled, record = spoil("pii_email", maker=lambda i: vqa_sample(0, i, "zh"))
    assert record["field"] == "question" and spoiled.question.startswith(clean.question)
    assert "邮箱" in spoiled.question and spoiled.answers == clean.answers


def test_checksum_helpers_agree_with_independent_checks():
    from vlstack.synthetic.fake_pii import cn_id_check_char, luhn_check_digit

    assert luhn_check_digit("7992739871") == "3"  # the textbook Luhn example
    assert cn_id_valid("11010519491231002" + cn_id_check_char("11010519491231002"))
    assert cn_id_check_char("11010519491231002") == "X"  # the example printed in GB 11643-1999
