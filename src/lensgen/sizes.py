"""Image sizes: the Lens aspect-ratio table, its scaled classes, and validation of user sizes.

Lens trains and samples at nine aspect ratios from 1:2 to 2:1. The 1024 class is the published
table; other classes (512, 768, 1440, or tiny ones for the Shapes world) scale it: the short side
is scaled and rounded to the token multiple, then the long side keeps the class ratio. That gives
(1440, 1440) and (2080, 1040) for the 1440 class, as released.
"""

from __future__ import annotations

import math

from lensgen.errors import UserError

# (height, width) of the 1024 class, tallest first; the transposes are the wide sizes.
LENS_1024_TABLE: tuple[tuple[int, int], ...] = (
    (1472, 736),
    (1376, 768),
    (1248, 832),
    (1152, 864),
    (1024, 1024),
    (864, 1152),
    (832, 1248),
    (768, 1376),
    (736, 1472),
)

MIN_RATIO = 0.5  # width / height, i.e. 1:2 (portrait)
MAX_RATIO = 2.0  # 2:1 (landscape)


def _round_to(x: float, multiple: int) -> int:
    return max(multiple, int(math.floor(x / multiple + 0.5)) * multiple)


def size_table(base: int = 1024, multiple: int = 16) -> list[tuple[int, int]]:
    """The nine (height, width) sizes of the class whose square size is `base`, as multiples of `multiple`."""
    if base <= 0 or multiple <= 0:
        raise ValueError(f"base and multiple must be positive, got base={base}, multiple={multiple}")
    scale = base / 1024
    sizes = []
    for h, w in LENS_1024_TABLE:
        short, long_ = min(h, w), max(h, w)
        new_short = _round_to(short * scale, multiple)
        new_long = _round_to(new_short * long_ / short, multiple)
        sizes.append((new_long, new_short) if h >= w else (new_short, new_long))
    return sizes


def validate_size(height: int, width: int, multiple: int = 16, max_side: int | None = None) -> tuple[int, int]:
    """Check a requested size: multiples of `multiple`, aspect ratio within 1:2..2:1. Returns (height, width)."""
    problems = []
    if height <= 0 or width <= 0:
        problems.append("both sides must be positive")
    if height % multiple or width % multiple:
        problems.append(f"both sides must be multiples of {multiple}")
    if height > 0 and width > 0 and not (MIN_RATIO - 1e-9 <= width / height <= MAX_RATIO + 1e-9):
        problems.append(f"the aspect ratio width/height = {width / height:.3f} is outside 1:2 .. 2:1")
    if max_side is not None and max(height, width) > max_side:
        problems.append(f"the longest side may be at most {max_side}")
    if problems:
        examples = ", ".join(f"{w}x{h}" for h, w in size_table(1024 if multiple == 16 else 8 * multiple, multiple)[2:7])
        raise UserError(
            f"size {width}x{height} (WxH) is not allowed: {'; '.join(problems)}. "
            f"Allowed: any WxH with both sides multiples of {multiple} and width/height between 0.5 and 2, "
            f"e.g. {examples}."
        )
    return height, width


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'WxH' (width first, as image tools write it) into (height, width)."""
    try:
        w_text, h_text = text.lower().split("x")
        return int(h_text), int(w_text)
    except ValueError:
        raise UserError(f"cannot read size '{text}': expected WIDTHxHEIGHT, e.g. 1024x768") from None
