"""Fixtures for the cleaning filters: real photographs from scikit-image, and image encoding."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image


def _skimage_photo(name: str) -> Image.Image:
    data = pytest.importorskip("skimage.data", reason="pip install scikit-image (test dependency)")
    return Image.fromarray(getattr(data, name)())


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """512x512 RGB portrait with one frontal face (Eileen Collins)."""
    return _skimage_photo("astronaut")


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    """600x400 RGB photograph of a coffee cup: no face, unrelated to the astronaut."""
    return _skimage_photo("coffee")


@pytest.fixture(scope="session")
def encode() -> Callable[..., bytes]:
    """encode(image, "PNG" | "JPEG", **save_options) -> bytes."""

    def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return _encode
