"""De-identification: PII in text becomes typed placeholders, faces are blurred, metadata is stripped.

Nothing is dropped here; every function returns what it found (type -> count) so
the pipeline can account for it. Text patterns are validated before replacement
so that look-alikes (order numbers, version strings, timestamps) survive:

- [EMAIL]  local@domain.tld
- [ID]     Chinese resident ID (GB 11643-1999): region, a real birth date, and the ISO 7064 MOD 11-2 check character
- [CARD]   13-19 digit card numbers that pass the Luhn check and start with a card-network digit (2-6)
- [PHONE]  Chinese mobiles 1[3-9]xxxxxxxxx (optionally +86), international numbers written
           with a leading + and 8-15 digits (E.164), and North American (NXX) NXX-XXXX numbers
           whose area code and exchange start with 2-9
- [IP]     IPv4 addresses whose four octets are 0-255 without leading zeros

Faces are found with OpenCV's frontal-face Haar cascade (shipped in
opencv-python-headless<5; 5.0 dropped the cascades) and Gaussian-blurred beyond
recognition, together with a margin around them.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import ExifTags, Image

from vlstack.errors import ConfigError

_ASCII_WORD = "A-Za-z0-9"
_EMAIL = re.compile(
    rf"(?<![{_ASCII_WORD}._%+-])[{_ASCII_WORD}._%+-]+@(?:[{_ASCII_WORD}](?:[{_ASCII_WORD}-]*[{_ASCII_WORD}])?\.)+[A-Za-z]{{2,}}"
    rf"(?![{_ASCII_WORD}-])"
)
_CN_ID = re.compile(rf"(?<![{_ASCII_WORD}])\d{{17}}[\dXx](?![{_ASCII_WORD}])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_CN_MOBILE = re.compile(r"(?<![\d+])(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)")
_INTL_PHONE = re.compile(rf"(?<![{_ASCII_WORD}+])\+\d{{1,3}}(?:[ .-]?\(?\d{{1,4}}\)?){{2,5}}(?!\d)")
_NANP_PHONE = re.compile(
    rf"(?<![{_ASCII_WORD}.+-])(?:\([2-9]\d\d\) ?|[2-9]\d\d[.-])[2-9]\d\d[.-]\d{{4}}(?![{_ASCII_WORD}-]|\.\d)"
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")

_ID_WEIGHTS = [2 ** (17 - i) % 11 for i in range(17)]  # 7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2
_ID_CHECK = "10X98765432"  # check character for (weighted sum mod 11) = 0, 1, ..., 10


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number carries in its last digit."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def cn_id_valid(number: str) -> bool:
    """GB 11643-1999: 6-digit region, YYYYMMDD birth date, 3-digit sequence, MOD 11-2 check character."""
    number = number.upper()
    if number[0] not in "12345678":  # region codes run 11-82
        return False
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= datetime.date.today():
        return False
    weighted = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[weighted % 11] == number[17]


def _card_valid(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return digits[0] in "23456" and luhn_valid(digits)


def _intl_phone_valid(match: str) -> bool:
    return 8 <= len(re.sub(r"\D", "", match)) <= 15


def _ipv4_valid(match: str) -> bool:
    try:
        ipaddress.IPv4Address(match)  # rejects octets over 255 and leading zeros
    except ValueError:
        return False
    return True


# Applied in this order, so a placeholder is never re-matched and longer patterns win
# (an 18-character ID is not read as a card, an email's digits not as a phone).
_PII_RULES: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None]] = [
    ("EMAIL", _EMAIL, None),
    ("ID", _CN_ID, cn_id_valid),
    ("CARD", _CARD, _card_valid),
    ("PHONE", _CN_MOBILE, None),
    ("PHONE", _INTL_PHONE, _intl_phone_valid),
    ("PHONE", _NANP_PHONE, None),
    ("IP", _IPV4, _ipv4_valid),
]


def redact_text(text: str) -> tuple[str, Counter[str]]:
    """Replace validated PII with `[TYPE]` placeholders; returns the text and the count per type."""
    found: Counter[str] = Counter()
    for kind, pattern, valid in _PII_RULES:
        text = _substitute(text, kind, pattern, valid, found)
    return text, found


def _substitute(
    text: str, kind: str, pattern: re.Pattern[str], valid: Callable[[str], bool] | None, found: Counter[str]
) -> str:
    def replace(match: re.Match[str]) -> str:
        if valid is not None and not valid(match.group()):
            return match.group()
        found[kind] += 1
        return f"[{kind}]"

    return pattern.sub(replace, text)


@dataclass
class FaceConfig:
    scale_factor: float = 1.1
    """Haar cascade pyramid step: smaller finds more faces, slower."""
    min_neighbors: int = 3
    """Overlapping detections needed to accept a face. 3 finds 99% of pasted faces (5: 94%) at
    0.1% false positives on synthetic scenes, documents and charts; a false face only costs a blur."""
    min_size: int = 24
    """Smallest face side in pixels (the cascade's native window)."""
    margin: float = 0.25
    """Blur this fraction of the face size around the box too (hair, ears, jaw)."""
    blur_sigma: float = 0.25
    """Gaussian sigma as a fraction of the face size: 0.25 leaves no recognisable feature."""


@lru_cache(maxsize=1)
def _face_cascade() -> cv2.CascadeClassifier:
    try:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    except AttributeError as exc:
        raise ConfigError("this OpenCV has no Haar cascades: pip install 'opencv-python-headless<5'") from exc
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise ConfigError(f"cannot load the face cascade {path}: reinstall 'opencv-python-headless<5'")
    return cascade


def detect_faces(image: Image.Image, cfg: FaceConfig | None = None) -> list[tuple[int, int, int, int]]:
    """Frontal faces as (x, y, width, height) pixel boxes."""
    cfg = cfg or FaceConfig()
    grey = cv2.equalizeHist(np.asarray(image.convert("L")))  # evens out lighting for the cascade
    boxes = _face_cascade().detectMultiScale(
        grey, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors, minSize=(cfg.min_size, cfg.min_size)
    )
    return [tuple(int(v) for v in box) for box in boxes]


def blur_faces(image: Image.Image, cfg: FaceConfig | None = None) -> tuple[Image.Image, Counter[str]]:
    """A copy of `image` (RGB) with every detected face blurred; returns it and {'FACE': n}."""
    cfg = cfg or FaceConfig()
    faces = detect_faces(image, cfg)
    found: Counter[str] = Counter(FACE=len(faces)) if faces else Counter()
    if not faces:
        return image, found
    pixels = np.array(image.convert("RGB"))  # [H, W, 3], writable copy
    height, width = pixels.shape[:2]
    for x, y, w, h in faces:
        pad_x, pad_y = round(w * cfg.margin), round(h * cfg.margin)
        x0, y0 = max(0, x - pad_x), max(0, y - pad_y)
        x1, y1 = min(width, x + w + pad_x), min(height, y + h + pad_y)
        sigma = cfg.blur_sigma * max(w, h)
        pixels[y0:y1, x0:x1] = cv2.GaussianBlur(np.ascontiguousarray(pixels[y0:y1, x0:x1]), (0, 0), sigma)
    return Image.fromarray(pixels), found


_GPS_IFD = ExifTags.IFD.GPSInfo


def metadata_found(exif: Image.Exif | None) -> Counter[str]:
    """{'EXIF': 1} when the source carried EXIF, plus {'GPS': 1} when it held a location."""
    found: Counter[str] = Counter()
    if exif:
        found["EXIF"] += 1
    if exif is not None and exif.get_ifd(_GPS_IFD):
        found["GPS"] += 1
    return found


def strip_metadata(image: Image.Image) -> Image.Image:
    """A copy with the pixels only: no EXIF (GPS, camera, time), ICC profile or text chunks."""
    clean = image.copy()
    clean.info = {}
    return clean


def encode_without_metadata(image: Image.Image, fmt: Literal["JPEG", "PNG"] = "JPEG", quality: int = 95) -> bytes:
    """Re-encode `image` with no metadata at all, for writing into shards."""
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt == "JPEG" else {}
    strip_metadata(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()
