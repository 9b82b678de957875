"""Fonts for rendering synthetic documents and charts.

English text uses the font bundled with Pillow, so it renders the same on every
machine. Chinese needs a CJK font from the system; `VLSTACK_CJK_FONT` points at
one explicitly, otherwise the usual Debian/Ubuntu/macOS locations are tried.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from vlstack.errors import DataError

CJK_FONT_PATHS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
)


@lru_cache(maxsize=64)
def get_font(lang: str, size: int) -> ImageFont.FreeTypeFont:
    """A font of `size` pixels that has the glyphs of `lang` ("en" or "zh")."""
    if lang != "zh":
        return ImageFont.load_default(size)
    return ImageFont.truetype(str(cjk_font_path()), size)


def cjk_font_path() -> Path:
    candidates = [os.environ["VLSTACK_CJK_FONT"]] if os.environ.get("VLSTACK_CJK_FONT") else CJK_FONT_PATHS
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    raise DataError(
        f"rendering Chinese text needs a CJK font, none found at {', '.join(candidates)}; "
        "install one (apt-get install fonts-wqy-microhei) or set VLSTACK_CJK_FONT=/path/to/font.ttc"
    )
