"""The human side of an application run: one self-contained HTML page of headings, paragraphs,
tables and galleries of images with captions (thumbnails, annotated frames) beside it."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlstack.eval.report import Table, block_html


@dataclass
class Figure:
    src: str
    """Path of the image relative to the page; empty: a caption without an image."""
    caption: str
    title: str = ""


@dataclass
class Gallery:
    figures: list[Figure]


Block = tuple[str, str] | Table | Gallery
"""("h1" | "h2" | "p", text), a table or a gallery."""


def write_page(path: str | Path, title: str, blocks: list[Block]) -> Path:
    path = Path(path)
    body = ['<div class="gallery">' + "".join(_figure(f) for f in block.figures) + "</div>"
            if isinstance(block, Gallery) else block_html(block) for block in blocks]
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:80rem;margin:2rem auto;padding:0 1rem}"
            "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;"
            "text-align:left;vertical-align:top}th{background:#f3f3f3}.gallery{display:flex;flex-wrap:wrap;gap:1rem}"
            "figure{margin:0;width:16rem}figure img{width:16rem;image-rendering:pixelated;border:1px solid #ccc}"
            "figcaption{font-size:.85rem;white-space:pre-wrap}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path


def save_image(image: Image.Image, path: str | Path, max_side: int = 256) -> Path:
    """Save a PNG no larger than `max_side`, with no metadata at all (Pillow writes none unless asked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = image.copy()
    image.info.clear()
    image.thumbnail((max_side, max_side))
    image.save(path, format="PNG")
    return path


def _figure(figure: Figure) -> str:
    title = f"<b>{html.escape(figure.title)}</b><br>" if figure.title else ""
    image = f'<img src="{html.escape(figure.src)}" alt="{html.escape(figure.title)}">' if figure.src else ""
    return f"<figure>{image}<figcaption>{title}{html.escape(figure.caption)}</figcaption></figure>"
