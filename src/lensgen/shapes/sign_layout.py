"""Sign layouts: where a prompt's quoted word goes and how it looks, drawn for a model to copy.

A 15M-parameter model does not learn to spell from a word's text-encoder token (a held-out word says nothing
of its letters). Layout-conditioned text renderers (TextDiffuser, GlyphControl, AnyText) show the model the
text drawn where it is to go, and writing becomes copying, for any word. Here the layout is the sign alone:
a white board with the word in the sign font at its place, on black. Training takes the scene's own sign;
sampling plans one for the prompt's quoted word, placed as the scene generator places signs, from a
generator seeded by the prompt and the seed (the same pair always gets the same layout).
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from lensgen.shapes.render import render
from lensgen.shapes.scene import Background, Scene, Sign, make_sign

QUOTED = re.compile(r"\"([^\"]+)\"|\u201c([^\u201d]+)\u201d")
PLAN_TRIES = 100  # make_sign draws the letter height at random; a long word fits only at the small end


def quoted_word(prompt: str) -> str | None:
    """The first quoted text of a prompt ("..." or curly quotes), or None."""
    m = QUOTED.search(prompt)
    return (m.group(1) or m.group(2)).strip() or None if m else None


def planned_sign(prompt: str, seed: int, aspect: float = 1.0) -> Sign | None:
    """A sign for the prompt's quoted word, placed as scenes place signs; None when the prompt quotes nothing
    or the word cannot be drawn legibly at this aspect."""
    word = quoted_word(prompt)
    if word is None:
        return None
    rng = np.random.default_rng([zlib.crc32(prompt.encode()), seed])
    for _ in range(PLAN_TRIES):
        if (sign := make_sign(rng, aspect, word)) is not None:
            return sign
    return None


def layout_drawing(sign: Sign | None, height: int, width: int) -> np.ndarray:
    """(height, width) float32 in [0, 1]: the sign alone, its board 1 and its letters 0, on 0; zeros when
    there is no sign."""
    if sign is None:
        return np.zeros((height, width), np.float32)
    scene = Scene(objects=[], background=Background("plain", 0, 0), sign=sign, aspect=width / height)
    return np.asarray(render(scene, height, width).convert("L"), dtype=np.float32) / 255.0


def layout_tokens(sign: Sign | None, height: int, width: int, factor: int) -> np.ndarray:
    """(height/factor * width/factor, factor**2): the layout drawing cut into the token grid's patches,
    row-major as image tokens are, each patch's pixels row-major: a model's per-token layout input."""
    if height % factor or width % factor:
        raise ValueError(f"{width}x{height} is not a multiple of {factor} pixels per token")
    h, w = height // factor, width // factor
    drawing = layout_drawing(sign, height, width)
    return drawing.reshape(h, factor, w, factor).transpose(0, 2, 1, 3).reshape(h * w, factor * factor)


def planned_layouts(prompts: list[str], seeds: list[int], height: int, width: int, factor: int) -> np.ndarray | None:
    """(B, N, factor**2) layout tokens of each prompt's planned sign (zeros for a prompt that quotes nothing), or
    None when no prompt quotes a word: what a sampler gives a model with a layout input."""
    signs = [planned_sign(p, s, width / height) for p, s in zip(prompts, seeds, strict=True)]
    if all(sign is None for sign in signs):
        return None
    return np.stack([layout_tokens(sign, height, width, factor) for sign in signs])


__all__ = ["QUOTED", "layout_drawing", "layout_tokens", "planned_layouts", "planned_sign", "quoted_word"]
