"""Reading sign text with RapidOCR (ONNX models bundled in the PyPI package, so it runs offline).

The engine loads once per process (about 2 s) and is cached here; the judge calls OCR only when text is
expected or asked for. A sign found by the judge is read as one line (recognition only, ~0.04 s); without
a sign the whole image goes through text detection too (~0.5 s).
"""

from __future__ import annotations

import functools
import re

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=1)
def engine():
    import logging

    from rapidocr_onnxruntime import RapidOCR

    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    return RapidOCR()


def normalise_text(text: str) -> str:
    """Upper-case letters and digits only: what a sign in the Shapes world can say."""
    return re.sub(r"[^A-Z0-9]", "", text.upper())


LINE_HEIGHT = 48  # a sign's crop is resized to this height for the recogniser


def sign_window(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels of a sign's box (x0, y0, x1, y1) that are read: rounded outward, clipped to the image."""
    x0, y0, x1, y1 = box
    return max(0, int(x0)), max(0, int(y0)), min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))


def line_width(width: int, height: int) -> int:
    """The width of a width x height crop resized to LINE_HEIGHT, its aspect kept."""
    return max(8, round(width * LINE_HEIGHT / max(1, height)))


def read_text(image: Image.Image | np.ndarray, box: tuple[float, float, float, float] | None = None,
              whole_image: bool = True) -> str:
    """OCR a sign (`box` = x0, y0, x1, y1: one line, recognised directly, ~0.04 s) or the whole image
    (text detection first, upscaled so small renders stay legible, ~0.5 s); a sign read as nothing falls
    back to the whole image unless `whole_image` is False."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    img = img.convert("RGB")
    if box is not None:
        img = img.crop(sign_window(box, img.width, img.height))
        img = img.resize((line_width(img.width, img.height), LINE_HEIGHT), Image.BICUBIC)
        result, _ = engine()(np.asarray(img), use_det=False, use_cls=False)
        text = "".join(r[0] for r in result or [] if r[1] > 0.5)
        if text or not whole_image:
            return normalise_text(text)
    if img.height < 256:
        f = 256 / img.height
        img = img.resize((max(1, int(img.width * f)), 256), Image.BICUBIC)
    result, _ = engine()(np.asarray(img))
    if not result:
        return ""
    result = sorted(result, key=lambda r: min(p[0] for p in r[0]))  # left to right
    return normalise_text("".join(r[1] for r in result))


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def text_similarity(read: str, target: str) -> float:
    """1 - normalised edit distance (the CVTG / LongText convention), on normalised text."""
    a, b = normalise_text(read), normalise_text(target)
    if not a and not b:
        return 1.0
    return 1.0 - edit_distance(a, b) / max(len(a), len(b))
