from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageDraw, ImageFilter

from vlstack.data.clean import quality
from vlstack.data.clean.quality import BlurConfig, DecodeConfig, blur_score, check_blur, decode_image, to_rgb
from vlstack.synthetic.scenes import shape_scene


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB but holds almost no pixel data (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


# --- decode / validate -------------------------------------------------------------------


def test_valid_images_decode_to_rgb(astronaut, encode):
    for fmt in ("PNG", "JPEG"):
        decoded = decode_image(encode(astronaut, fmt))
        assert decoded.verdict.keep
        assert decoded.image.mode == "RGB" and decoded.image.size == (512, 512)
        assert decoded.source_mode == "RGB"


@pytest.mark.parametrize("side", [10_000, 20_000])  # over our limit; over Pillow's own hard limit
def test_decompression_bomb_rejected_from_header_without_decoding(side, monkeypatch):
    def refuse_to_decode(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(Image.Image, "load", refuse_to_decode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", refuse_to_decode)
    decoded = decode_image(png_header_only(side, side))
    assert decoded.image is None
    assert decoded.verdict.reason == quality.TOO_MANY_PIXELS


def test_pixel_limit_is_configurable(astronaut, encode):
    decoded = decode_image(encode(astronaut), DecodeConfig(max_pixels=512 * 511))
    assert decoded.verdict.reason == quality.TOO_MANY_PIXELS
    assert "512x512" in decoded.verdict.detail


def test_garbage_and_empty_bytes_are_unreadable():
    assert decode_image(b"").verdict.reason == quality.UNREADABLE
    assert decode_image(bytes(random.Random(0).randbytes(4096))).verdict.reason == quality.UNREADABLE


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_corrupt(fmt, astronaut, encode):
    data = encode(astronaut, fmt)
    decoded = decode_image(data[: len(data) // 2])
    assert decoded.image is None
    assert decoded.verdict.reason == quality.CORRUPT
    assert decoded.verdict.detail  # the decoder's message, for rejected.jsonl


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_no_exception_escapes_on_damaged_bytes(fmt, encode):
    rng = random.Random(1)
    data = bytearray(encode(shape_scene(0, 0, image_size=64).image, fmt))
    for _ in range(60):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        decoded = decode_image(bytes(damaged))
        assert (decoded.image is None) == (decoded.verdict.reason is not None)


def test_cmyk_converts_to_rgb(encode):
    red_in_cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    decoded = decode_image(encode(red_in_cmyk, "JPEG"))
    assert decoded.source_mode == "CMYK" and decoded.image.mode == "RGB"
    r, g, b = decoded.image.getpixel((32, 32))
    assert r > 240 and g < 15 and b < 15


def test_16_bit_grey_is_rescaled_not_clipped(encode):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))  # [64, 64]
    decoded = decode_image(encode(Image.fromarray(ramp), "PNG"))
    assert decoded.source_mode == "I;16"
    pixels = np.asarray(decoded.image)  # [64, 64, 3]
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, -1].tolist() == [255, 255, 255]
    assert 120 <= pixels[0, 32, 0] <= 136  # mid-grey stays mid-grey (Pillow's own convert would give 255)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_composited_over_white(mode, encode):
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black
    ImageDraw.Draw(image).rectangle((0, 0, 31, 63), fill=(200, 30, 30, 255))
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("P")  # Pillow keeps the transparent colour as a palette index
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((48, 32)) == (255, 255, 255)
    assert decoded.image.getpixel((16, 32)) != (255, 255, 255)


def test_to_rgb_leaves_rgb_alone(astronaut):
    assert to_rgb(astronaut) is astronaut


@pytest.mark.parametrize(
    ("size", "reason"),
    [((20, 300), quality.TOO_SMALL), ((300, 20), quality.TOO_SMALL), ((600, 100), quality.ASPECT_RATIO)],
)
def test_geometry_limits(size, reason, encode):
    decoded = decode_image(encode(Image.new("RGB", size, "white")))
    assert decoded.verdict.reason == reason


def test_exif_orientation_is_applied(encode):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 degrees clockwise to display"
    decoded = decode_image(encode(Image.new("RGB", (80, 40), "white"), "JPEG", exif=exif))
    assert decoded.image.size == (40, 80)


# --- blur ----------------------------------------------------------------------------------


def blurred(image: Image.Image, sigma: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(sigma)) if sigma else image


def test_blur_score_increases_with_gaussian_sigma(astronaut):
    scores = [blur_score(blurred(astronaut, sigma)) for sigma in (0, 0.5, 1, 1.5, 2, 4, 8)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    assert all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "scene"])
def test_sharp_kept_heavily_blurred_dropped(name, request):
    image = shape_scene(0, 1, image_size=384).image if name == "scene" else request.getfixturevalue(name)
    assert check_blur(image).keep
    verdict = check_blur(blurred(image, 3))
    assert verdict.reason == quality.BLUR and verdict.score > BlurConfig().max_score


def test_blur_mapping_matches_documentation():
    assert blur_score(Image.new("RGB", (64, 64), (90, 90, 90))) == 1.0  # flat: Laplacian variance 0
    # a one-pixel checkerboard has Laplacian +-4*255 everywhere: variance 1020^2
    checker = Image.fromarray(((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8))
    assert blur_score(checker) == pytest.approx(1 / (1 + 1020**2 / BlurConfig().half_variance))


def test_blur_score_does_not_depend_on_oversampling(astronaut):
    large = astronaut.resize((1024, 1024), Image.Resampling.LANCZOS)
    assert abs(blur_score(large) - blur_score(astronaut.resize((512, 512)))) < 0.05
