"""Image quality: decode and validate untrusted bytes, and score blur.

Decoding never raises: web data holds corrupt files, truncated downloads and
decompression bombs, and one bad sample must become a reason code, not a crashed
run. The pixel limit is checked from the header before any pixel data is decoded.

Blur is scored from the variance of the Laplacian (a sharp image has strong
second derivatives at its edges; blurring spreads them out), mapped to [0, 1]
with higher = blurrier:

    score = 1 / (1 + variance / half_variance)

so a flat or fully blurred image (variance 0) scores 1, `half_variance` scores
0.5, and the drop threshold 0.7 corresponds to variance = half_variance * 3/7
(= 30 with the default 70). Measured on 8-bit grey levels: sharp photographs
(skimage astronaut/camera/coffee) have variances of 700-1100, sharp rendered
documents over 10 000, sparse synthetic shape scenes ~200 at 384 px; a Gaussian
blur of sigma 1.5 brings all of them below 25 and sigma 2 below 12. Images are
downscaled (never upscaled) to `analysis_side` first, so the score does not
depend on how finely a web image was oversampled.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageOps

from vlstack.data.clean.verdict import Verdict

UNREADABLE = "decode.unreadable"
"""Not an image Pillow recognises, or a broken header."""
CORRUPT = "decode.corrupt"
"""The header is fine but the pixel data is broken or truncated."""
TOO_MANY_PIXELS = "decode.too_many_pixels"
TOO_SMALL = "decode.too_small"
ASPECT_RATIO = "decode.aspect_ratio"
BLUR = "blur"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


@dataclass
class DecodeConfig:
    max_pixels: int = 89_478_485
    """Largest width*height accepted, read from the header (Pillow's MAX_IMAGE_PIXELS default;
    Pillow itself refuses more than twice its own limit, so larger values are capped there)."""
    min_side: int = 32
    """Smallest accepted width or height: smaller images carry too little to learn from."""
    max_aspect_ratio: float = 5.0
    """Largest accepted long side / short side: banners and strips squash badly to a square."""
    exif_orientation: bool = True
    """Rotate by the EXIF orientation tag before anything else, since stripping EXIF later
    would otherwise leave the image sideways."""


@dataclass
class Decoded:
    """The outcome of `decode_image`: an RGB image, or None with the reason in `verdict`."""

    image: Image.Image | None
    verdict: Verdict
    source_mode: str | None = None
    """The mode before conversion to RGB (e.g. 'CMYK', 'I;16', 'RGBA'), for accounting."""
    exif: Image.Exif | None = field(default=None, repr=False)
    """The source's EXIF, so the privacy stage can report what re-encoding strips."""


def decode_image(data: bytes, cfg: DecodeConfig | None = None) -> Decoded:
    """Decode untrusted image bytes to RGB; every failure becomes a reason code, never an exception."""
    cfg = cfg or DecodeConfig()
    try:
        image = _open(data)  # reads the header only
    except Image.DecompressionBombError as exc:
        return Decoded(None, Verdict(reason=TOO_MANY_PIXELS, detail=str(exc)))
    except Exception as exc:  # decoders raise many types on hostile bytes
        return Decoded(None, Verdict(reason=UNREADABLE, detail=_describe(exc)))

    width, height = image.size
    rejection = _check_geometry(width, height, cfg)
    if rejection is not None:
        return Decoded(None, rejection, source_mode=image.mode)

    source_mode = image.mode
    try:
        _open(data).verify()  # checksums (PNG chunk CRCs) that decoding alone does not check
        image.load()
    except Exception as exc:
        return Decoded(None, Verdict(reason=CORRUPT, detail=_describe(exc)), source_mode=source_mode)
    exif = _read_exif(image)
    if cfg.exif_orientation and exif is not None:
        image = ImageOps.exif_transpose(image)
    try:
        rgb = to_rgb(image)
    except Exception as exc:  # a mode Pillow cannot convert (e.g. LAB without a profile)
        return Decoded(None, Verdict(reason=CORRUPT, detail=_describe(exc)), source_mode=source_mode)
    return Decoded(rgb, Verdict(), source_mode=source_mode, exif=exif)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without losing the picture.

    16-bit grey is rescaled (Pillow's own conversion clips at 255, turning it
    white); transparent pixels are composited over white, since their colour
    values are arbitrary (often black) and only the alpha made them invisible.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.round(grey).astype(np.uint8)).convert("RGB")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass
class BlurConfig:
    max_score: float = 0.7
    """Drop images whose blur score is above this (the article's value)."""
    half_variance: float = 70.0
    """Laplacian variance that maps to a score of 0.5; 0.7 then means variance 30 (see module doc)."""
    analysis_side: int = 512
    """Images with a longer side are downscaled to it before measuring."""


def blur_score(image: Image.Image, cfg: BlurConfig | None = None) -> float:
    """Blur in [0, 1], higher = blurrier, from the variance of the Laplacian (module doc)."""
    cfg = cfg or BlurConfig()
    grey = np.asarray(image.convert("L"))  # [H, W] uint8
    longest = max(grey.shape)
    if longest > cfg.analysis_side:
        scale = cfg.analysis_side / longest
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    variance = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    return 1.0 / (1.0 + variance / cfg.half_variance)


def check_blur(image: Image.Image, cfg: BlurConfig | None = None) -> Verdict:
    cfg = cfg or BlurConfig()
    score = blur_score(image, cfg)
    return Verdict(score=score, reason=BLUR if score > cfg.max_score else None)


def _check_geometry(width: int, height: int, cfg: DecodeConfig) -> Verdict | None:
    if width * height > cfg.max_pixels:
        return Verdict(reason=TOO_MANY_PIXELS, detail=f"{width}x{height} is over {cfg.max_pixels} pixels")
    if min(width, height) < cfg.min_side:
        return Verdict(reason=TOO_SMALL, detail=f"{width}x{height} has a side under {cfg.min_side}")
    ratio = max(width, height) / min(width, height)
    if ratio > cfg.max_aspect_ratio:
        detail = f"{width}x{height} has aspect ratio {ratio:.1f} > {cfg.max_aspect_ratio}"
        return Verdict(reason=ASPECT_RATIO, detail=detail)
    return None


def _open(data: bytes) -> Image.Image:
    """Open lazily; the pixel limit is ours to check (Pillow still refuses twice its own limit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _read_exif(image: Image.Image) -> Image.Exif | None:
    """The image's EXIF, or None when it is unreadable: bad metadata is no reason to lose the picture."""
    try:
        return image.getexif()
    except Exception:
        return None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
