"""The sign font: Pillow's bundled scalable font, so renders are identical on every machine (no system fonts)."""

from __future__ import annotations

import functools

from PIL import ImageFont

_REFERENCE_SIZE = 200


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(1, int(size)))


@functools.cache
def cap_height_ratio() -> float:
    """Ink height of capital letters per unit of font size."""
    x0, y0, x1, y1 = font(_REFERENCE_SIZE).getbbox("HXE")
    return (y1 - y0) / _REFERENCE_SIZE


@functools.lru_cache(maxsize=4096)
def ink_ratio(word: str) -> float:
    """Ink width / ink height of `word` in capitals: the sign's layout needs it before any rendering."""
    x0, y0, x1, y1 = font(_REFERENCE_SIZE).getbbox(word)
    return (x1 - x0) / (cap_height_ratio() * _REFERENCE_SIZE)
