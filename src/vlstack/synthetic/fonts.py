"""Fonts for rendering synthetic documents and charts.

English text uses the font bundled with Pillow; Chinese uses Noto Sans CJK SC from the
`mplfonts` package, a dependency of vlstack, so both render the same on every machine
without a system font. `VLSTACK_CJK_FONT` points at another font file explicitly.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from vlstack.errors import DataError

PACKAGED_CJK_FONT = ("mplfonts", "fonts/NotoSansCJKsc-Regular.otf")
"""(package, file inside it) of the CJK font; the package is found without importing it."""


@lru_cache(maxsize=64)
def get_font(lang: str, size: int) -> ImageFont.FreeTypeFont:
    """A font of `size` pixels that has the glyphs of `lang` ("en" or "zh")."""
    if lang != "zh":
        return ImageFont.load_default(size)
    return ImageFont.truetype(str(cjk_font_path()), size)


def cjk_font_path() -> Path:
    if os.environ.get("VLSTACK_CJK_FONT"):
        candidate = Path(os.environ["VLSTACK_CJK_FONT"])
        if not candidate.is_file():
            raise DataError(f"VLSTACK_CJK_FONT={candidate} is not a font file; unset it to use the packaged font")
        return candidate
    package, name = PACKAGED_CJK_FONT
    spec = importlib.util.find_spec(package)
    candidate = Path(next(iter(spec.submodule_search_locations))) / name if spec is not None else None
    if candidate is None or not candidate.is_file():
        raise DataError(f"rendering Chinese text needs a CJK font: the {package} package (a dependency of vlstack) "
                        f"is missing or lacks {name}; reinstall vlstack, or set VLSTACK_CJK_FONT=/path/to/font")
    return candidate
