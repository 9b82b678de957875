from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import ExifTags, Image

from vlstack.data.clean.privacy import (
    blur_faces,
    cn_id_valid,
    detect_faces,
    encode_without_metadata,
    luhn_valid,
    metadata_found,
    redact_text,
    strip_metadata,
)
from vlstack.data.clean.quality import decode_image

VALID_ID = "11010519491231002X"  # the worked example of GB 11643-1999


def with_luhn_digit(prefix: str) -> str:
    return next(prefix + str(d) for d in range(10) if luhn_valid(prefix + str(d)))


def with_check_char(first17: str) -> str:
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights)) % 11]


# --- checksums -----------------------------------------------------------------------------


def test_luhn():
    assert luhn_valid("79927398713") and luhn_valid("4111111111111111") and luhn_valid("5555555555554444")
    assert not luhn_valid("79927398710") and not luhn_valid("4111111111111112")


def test_gb11643_check_character():
    assert cn_id_valid(VALID_ID) and cn_id_valid(VALID_ID.lower())
    assert cn_id_valid(with_check_char("44030419900307551"))
    assert not cn_id_valid(VALID_ID[:-1] + "1")  # wrong check character
    assert not cn_id_valid(with_check_char("11010519491331002"))  # month 13
    assert not cn_id_valid(with_check_char("91010519491231002"))  # no region starts with 9


# --- text PII ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("mail zhang.san+cv@mail.example.com now", "mail [EMAIL] now", "EMAIL"),
        ("联系邮箱zhang@example.cn谢谢", "联系邮箱[EMAIL]谢谢", "EMAIL"),
        ("手机13812345678，", "手机[PHONE]，", "PHONE"),
        ("call 138-1234-5678 or", "call [PHONE] or", "PHONE"),
        ("电话+86 139 1234 5678。", "电话[PHONE]。", "PHONE"),
        ("London +44 20 7946 0958.", "London [PHONE].", "PHONE"),
        ("US +1 (415) 555-2671", "US [PHONE]", "PHONE"),
        ("Call (415) 555-2671 now", "Call [PHONE] now", "PHONE"),
        ("电话415.555.2671。", "电话[PHONE]。", "PHONE"),
        (f"身份证号{VALID_ID}。", "身份证号[ID]。", "ID"),
        ("card 4111 1111 1111 1111 exp", "card [CARD] exp", "CARD"),
        ("卡号5555-5555-5555-4444", "卡号[CARD]", "CARD"),
        ("server 192.168.1.254.", "server [IP].", "IP"),
    ],
)
def test_valid_pii_replaced_with_typed_placeholder(text, expected, kind):
    assert redact_text(text) == (expected, Counter({kind: 1}))


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        f"order {with_luhn_digit('911111111111111')} passes Luhn but no card network starts with 9",
        f"身份证号{VALID_ID[:-1]}1 has a wrong check character",
        f"birth date 13th month {with_check_char('11010519491331002')}",
        "octets 256.1.1.1 and 10.0.0.01 and a version 1.2.3",
        "not a mobile 12345678901, too short 1381234567, no plus 44 20 7946 0958",
        "no North American area code or exchange starts with 0 or 1: 123-456-7890, 415-155-2671",
        "a user@localhost is not an address",
        "timestamps 20240315123456 and 2024-03-15",
    ],
)
def test_invalid_look_alikes_are_kept(text):
    assert redact_text(text) == (text, Counter())


def test_several_kinds_counted_together():
    text = f"a@b.co, c@d.org, 13912345678, {VALID_ID}, 4111111111111111, 8.8.8.8"
    redacted, found = redact_text(text)
    assert redacted == "[EMAIL], [EMAIL], [PHONE], [ID], [CARD], [IP]"
    assert found == Counter(EMAIL=2, PHONE=1, ID=1, CARD=1, IP=1)


# --- faces ---------------------------------------------------------------------------------


def test_astronaut_face_detected_and_blurred(astronaut):
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    x, y, w, h = faces[0]
    assert 150 < x + w / 2 < 260 and 80 < y + h / 2 < 160 and w > 60  # Eileen Collins' face
    out, found = blur_faces(astronaut)
    assert found == Counter(FACE=1)
    assert detect_faces(out) == []  # no longer recognisable, even to the detector
    before = np.asarray(astronaut, dtype=np.float64)[y : y + h, x : x + w]
    after = np.asarray(out, dtype=np.float64)[y : y + h, x : x + w]
    assert after.std(axis=(0, 1)).mean() < 0.5 * before.std(axis=(0, 1)).mean()
    assert np.array_equal(np.asarray(out)[400:], np.asarray(astronaut)[400:])  # far from the face: untouched


def test_no_face_leaves_image_untouched(coffee):
    out, found = blur_faces(coffee)
    assert out is coffee and found == Counter()


# --- metadata ------------------------------------------------------------------------------


@pytest.fixture
def jpeg_with_gps(encode) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (40.0, 26.0, 46.0)
    return encode(Image.new("RGB", (64, 48), (30, 120, 200)), "JPEG", exif=exif)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_and_gps_reported_and_stripped(jpeg_with_gps, fmt):
    decoded = decode_image(jpeg_with_gps)
    assert metadata_found(decoded.exif) == Counter(EXIF=1, GPS=1)
    clean = Image.open(io.BytesIO(encode_without_metadata(decoded.image, fmt)))
    assert not clean.getexif() and "exif" not in clean.info
    assert metadata_found(decode_image(encode_without_metadata(decoded.image, fmt)).exif) == Counter()


def test_strip_metadata_keeps_pixels(jpeg_with_gps):
    image = decode_image(jpeg_with_gps).image
    stripped = strip_metadata(image)
    assert stripped.info == {} and "exif" in image.info  # the input is not modified
    assert np.array_equal(np.asarray(stripped), np.asarray(image))


def test_no_metadata_reports_nothing(encode):
    assert metadata_found(decode_image(encode(Image.new("RGB", (40, 40)))).exif) == Counter()
    assert metadata_found(None) == Counter()
