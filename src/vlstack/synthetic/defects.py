"""Defect injection with ground truth: what a cleaning pipeline must catch, and a record of where it is.

`plan_defects` picks which samples of a corpus are spoiled and how (every type
gets its share, so recall can be measured per type); `inject` spoils one sample
and appends `{"type": ..., details}` to its `meta["defects"]`. Both are pure
functions of the seed. Image defects act on the first image; text defects on
the question of a vqa sample and on `text` otherwise, keeping `<image>` markers.
"""

from __future__ import annotations

import copy
import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import ExifTags, Image, ImageEnhance, ImageFilter

from vlstack.data.schema import IMAGE_TOKEN, ImageRef, Sample, image_name
from vlstack.errors import DataError
from vlstack.synthetic.fake_pii import FAKERS
from vlstack.synthetic.scenes import encode_image

IMAGE_DEFECTS = (
    "blur", "face", "exif_gps", "corrupt_bytes", "truncated", "bomb", "mode_cmyk", "mode_16bit", "mode_alpha",
)
TEXT_DEFECTS = ("gibberish", "mismatch", *(f"pii_{name}" for name in FAKERS))
DUPLICATE_DEFECTS = ("duplicate_exact", "duplicate_near")
DEFECT_TYPES = IMAGE_DEFECTS + TEXT_DEFECTS + DUPLICATE_DEFECTS
BOMB_SIDE = 50_000
"""Declared width and height of a decompression bomb: 2.5 gigapixels, over Pillow's hard limit."""
_PII_TEMPLATES = {  # type: (English sentence, Chinese sentence)
    "email": ("Email me at {}.", "邮箱：{}。"),
    "phone": ("Call {} for details.", "电话：{}。"),
    "cn_mobile": ("Mobile: {}.", "手机号：{}。"),
    "cn_id": ("ID number {}.", "身份证号：{}。"),
    "credit_card": ("Card number {}.", "银行卡号：{}。"),
    "ip": ("Uploaded from {}.", "上传自{}。"),
}
_FACE_BOX = (160, 40, 290, 185)
"""The astronaut's face in `skimage.data.astronaut()`, with some margin."""


@dataclass(frozen=True)
class DefectPlan:
    type: str
    source: int | None = None
    """Index of the original a duplicate copies, or of the first donor tried for a mismatch."""


def plan_defects(n: int, rate: float, seed: int, types: tuple[str, ...] = DEFECT_TYPES) -> dict[int, DefectPlan]:
    """Spoil round(rate * n) samples, dealing `types` out in turn; sample 0 always stays clean.

    A duplicate copies the nearest clean sample before it, so the original is in
    the corpus, unchanged, ahead of its copy.
    """
    if not 0 <= rate <= 1:
        raise DataError(f"defect rate must be in [0, 1], got {rate}")
    unknown = sorted(set(types) - set(DEFECT_TYPES))
    if not types:
        raise DataError(f"no defect types given; valid types: {', '.join(DEFECT_TYPES)}")
    if unknown:
        raise DataError(f"unknown defect type(s) {unknown}; valid types: {', '.join(DEFECT_TYPES)}")
    rng = random.Random(f"plan:{seed}")
    chosen = rng.sample(range(1, n), min(max(n - 1, 0), round(rate * n)))
    order = list(types)
    rng.shuffle(order)
    kinds = {index: order[k % len(order)] for k, index in enumerate(chosen)}
    plans, last_clean = {}, 0
    for index in range(1, n):
        if index not in kinds:
            last_clean = index
        elif kinds[index] in DUPLICATE_DEFECTS:
            plans[index] = DefectPlan(kinds[index], last_clean)
        elif kinds[index] == "mismatch":
            plans[index] = DefectPlan("mismatch", rng.randrange(n))
        else:
            plans[index] = DefectPlan(kinds[index])
    return plans


def inject(sample: Sample, plan: DefectPlan, make: Callable[[int], Sample], seed: int) -> Sample:
    """A spoiled copy of `sample`; `make(index)` regenerates clean samples for duplicates and mismatches."""
    rng = random.Random(f"defect:{seed}:{sample.id}")
    if plan.type in DUPLICATE_DEFECTS:
        original = make(plan.source)
        spoiled = replace(copy.deepcopy(original), id=sample.id)
        record = {"of": original.id}
        if plan.type == "duplicate_near":
            record.update(_near_copy(spoiled, rng))
    elif plan.type == "mismatch":
        donor = _donor(sample, plan.source, make)
        spoiled = replace(copy.deepcopy(donor), id=sample.id, images=list(sample.images),
                          meta=copy.deepcopy(sample.meta))
        record = {"donor": donor.id}
    elif plan.type in TEXT_DEFECTS:
        spoiled = copy.deepcopy(sample)
        record = _spoil_text(spoiled, plan.type, rng)
    else:
        spoiled = copy.deepcopy(sample)
        record = _IMAGE_INJECTORS[plan.type](spoiled, rng)
    spoiled.meta.setdefault("defects", []).append({"type": plan.type, **record})
    return spoiled


def _donor(sample: Sample, start: int, make: Callable[[int], Sample]) -> Sample:
    """The first sample from `start` on whose text differs and whose image count is the same."""
    index = start
    while True:
        donor = make(index)
        if donor.id != sample.id and len(donor.images) == len(sample.images) and (
            donor.text, donor.question) != (sample.text, sample.question):
            return donor
        index += 1


def _text_field(sample: Sample) -> str:
    return "question" if sample.kind == "vqa" else "text"


def _spoil_text(sample: Sample, kind: str, rng: random.Random) -> dict:
    name = _text_field(sample)
    text, zh = getattr(sample, name), sample.meta.get("lang") == "zh"
    if kind == "gibberish":
        parts = [_gibberish(part, zh, rng) if part.strip() else part for part in text.split(IMAGE_TOKEN)]
        setattr(sample, name, IMAGE_TOKEN.join(parts).strip())
        return {"field": name}
    pii = kind.removeprefix("pii_")
    value = FAKERS[pii](rng)
    sentence = _PII_TEMPLATES[pii][zh].format(value)
    prefix = text if zh or not text else text + (" " if text.rstrip()[-1] in ".?!" else ". ")
    setattr(sample, name, prefix + sentence)
    start = len(prefix) + sentence.index(value)
    return {"field": name, "value": value, "span": [start, start + len(value)]}


def _gibberish(text: str, zh: bool, rng: random.Random) -> str:
    """Random characters of about the length of `text`: far above any language model's perplexity threshold."""
    if zh:
        return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(max(4, len(text.strip()))))
    words = max(3, len(text.split()))
    letters = "abcdefghijklmnopqrstuvwxyz"
    return " " + " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(words)) + " "


def _near_copy(sample: Sample, rng: random.Random) -> dict:
    """Slightly brighter or darker, cropped by a pixel or two and re-encoded as JPEG: the same picture to a person."""
    image = _decode(sample)
    factor = rng.choice((0.92, 0.95, 1.05, 1.08))
    crop = rng.randint(1, 2)
    image = ImageEnhance.Brightness(image.crop((crop, crop, image.width - crop, image.height - crop))).enhance(factor)
    _store(sample, encode_image(image.convert("RGB"), "jpeg", quality=90), "jpg")
    return {"brightness": factor, "crop": crop, "format": "jpeg"}


def _blur(sample: Sample, rng: random.Random) -> dict:
    image = _decode(sample)
    radius = round(max(2.0, min(image.size) / 24) * rng.uniform(1.0, 1.5), 2)
    _store(sample, encode_image(image.filter(ImageFilter.GaussianBlur(radius))), "png")
    return {"radius": radius}


def _face(sample: Sample, rng: random.Random) -> dict:
    """Paste a real photographed face (NASA's astronaut portrait shipped with scikit-image)."""
    image = _decode(sample).convert("RGB")
    face = _face_crop()
    width = max(16, int(min(image.size) * rng.uniform(0.55, 0.7)))
    face = face.resize((width, width * face.height // face.width), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        face = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = rng.randint(0, max(0, image.width - face.width))
    y = rng.randint(0, max(0, image.height - face.height))
    image.paste(face, (x, y))
    _store(sample, encode_image(image), "png")
    return {"box": [x, y, min(image.width, x + face.width), min(image.height, y + face.height)]}


@lru_cache(maxsize=1)
def _face_crop() -> Image.Image:
    try:
        from skimage import data
    except ImportError as error:
        raise DataError("the 'face' defect pastes a face from scikit-image's sample data: "
                        "pip install scikit-image") from error
    return Image.fromarray(data.astronaut()).crop(_FACE_BOX)


def _exif_gps(sample: Sample, rng: random.Random) -> dict:
    lat, lon = round(rng.uniform(-60, 70), 5), round(rng.uniform(-180, 180), 5)
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W", 4: _dms(lon)}
    exif[ExifTags.Base.Make] = "vlstack-synthetic"
    _store(sample, encode_image(_decode(sample).convert("RGB"), "jpeg", quality=95, exif=exif), "jpg")
    return {"lat": lat, "lon": lon}


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees, minutes = int(value), int(value % 1 * 60)
    return float(degrees), float(minutes), round((value * 3600) % 60, 2)


def _corrupt_bytes(sample: Sample, rng: random.Random) -> dict:
    """Random bytes over the middle third of the file; the header stays, so the type still looks right."""
    data = bytearray(sample.images[0].data)
    start, end = max(len(data) // 3, 34), max(2 * len(data) // 3, 35)  # past PNG's signature and IHDR
    data[start:end] = bytes(rng.randrange(256) for _ in range(end - start))
    sample.images[0].data = bytes(data)
    return {"span": [start, end]}


def _truncated(sample: Sample, rng: random.Random) -> dict:
    data = sample.images[0].data
    kept = int(len(data) * rng.uniform(0.3, 0.8))
    sample.images[0].data = data[:kept]
    return {"kept_bytes": kept, "of_bytes": len(data)}


def _bomb(sample: Sample, rng: random.Random) -> dict:
    """A small PNG whose header declares BOMB_SIDE x BOMB_SIDE pixels; its CRC is fixed, so only the size is wrong."""
    png = bytearray(encode_image(_decode(sample).convert("RGB")))
    png[16:24] = struct.pack(">II", BOMB_SIDE, BOMB_SIDE)  # IHDR width, height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # CRC over "IHDR" + its 13 data bytes
    _store(sample, bytes(png), "png")
    return {"declared": [BOMB_SIDE, BOMB_SIDE], "bytes": len(png)}


def _mode_cmyk(sample: Sample, rng: random.Random) -> dict:
    _store(sample, encode_image(_decode(sample).convert("CMYK"), "jpeg", quality=95), "jpg")
    return {"mode": "CMYK"}


def _mode_16bit(sample: Sample, rng: random.Random) -> dict:
    gray = np.asarray(_decode(sample).convert("L"), dtype=np.uint16)  # [H, W]
    _store(sample, encode_image(Image.fromarray(gray * 257)), "png")  # 0..255 -> 0..65535
    return {"mode": "I;16"}


def _mode_alpha(sample: Sample, rng: random.Random) -> dict:
    """RGBA with a transparent band: what a renderer shows depends on the background it composites onto."""
    image = _decode(sample).convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    band = rng.randint(image.height // 4, image.height // 2)
    alpha.paste(0, (0, 0, image.width, band))
    image.putalpha(alpha)
    _store(sample, encode_image(image), "png")
    return {"mode": "RGBA", "transparent_rows": band}


def _decode(sample: Sample) -> Image.Image:
    image = Image.open(io.BytesIO(sample.images[0].data))
    image.load()
    return image


def _store(sample: Sample, data: bytes, extension: str) -> None:
    sample.images[0] = ImageRef(image_name(0, len(sample.images), extension), data)


_IMAGE_INJECTORS: dict[str, Callable[[Sample, random.Random], dict]] = {
    "blur": _blur,
    "face": _face,
    "exif_gps": _exif_gps,
    "corrupt_bytes": _corrupt_bytes,
    "truncated": _truncated,
    "bomb": _bomb,
    "mode_cmyk": _mode_cmyk,
    "mode_16bit": _mode_16bit,
    "mode_alpha": _mode_alpha,
}
