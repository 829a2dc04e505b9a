"""The held-out split: which scenes belong to ShapesEval and never to training data.

Rules (a salted SHA-256 of a canonical key, so they are fixed and need no list):
- words: a sign word is held out when its bucket mod 5 is 0 (about a fifth of WORDS);
- colour pairs: an unordered pair of (colour, shape) with different colours and shapes is held out
  when its bucket mod 10 is 0; a training scene of exactly two objects never shows such a pair;
- positions: a triple (shape A, relation, shape B) of different shapes, written in its canonical form
  (left of / above), is held out when its bucket mod 4 is 0; a training scene of exactly two objects
  never shows a held-out triple (under GenEval's position rule).
ShapesEval's text, color_attr and position prompts are drawn only from held-out keys, so no training
scene is ever that prompt's scene. The small concept spaces (single objects, pairs of shapes, counts,
single colours) cannot be held out without hiding the concepts themselves; training does see them,
as GenEval's detector classes are seen in training data. This module holds the rules on keys;
`scene.scene_is_heldout` applies them to a whole scene.
"""

from __future__ import annotations

import hashlib
import itertools

from lensgen.shapes.vocab import COLOUR_NAMES, SHAPES, WORDS

_SALT = "lensgen-shapes-heldout-v1:"


def _bucket(key: str, modulo: int) -> int:
    return int(hashlib.sha256((_SALT + key).encode()).hexdigest()[:12], 16) % modulo


HELDOUT_WORDS: tuple[str, ...] = tuple(w for w in WORDS if _bucket("word:" + w, 5) == 0)
TRAIN_WORDS: tuple[str, ...] = tuple(w for w in WORDS if w not in HELDOUT_WORDS)


def is_heldout_pair(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """a, b: (colour, shape). Held out for colour attribution."""
    if a[0] == b[0] or a[1] == b[1]:
        return False
    key = "|".join(sorted(f"{c} {s}" for c, s in (a, b)))
    return _bucket("pair:" + key, 10) == 0


def canonical_position(shape_a: str, relation: str, shape_b: str) -> tuple[str, str, str]:
    if relation == "right of":
        return shape_b, "left of", shape_a
    if relation == "below":
        return shape_b, "above", shape_a
    return shape_a, relation, shape_b


def is_heldout_position(shape_a: str, relation: str, shape_b: str) -> bool:
    if shape_a == shape_b:
        return False
    a, rel, b = canonical_position(shape_a, relation, shape_b)
    return _bucket(f"position:{a} {rel} {b}", 4) == 0


def heldout_pairs() -> list[tuple[tuple[str, str], tuple[str, str]]]:
    kinds = [(c, s) for s in SHAPES for c in COLOUR_NAMES]
    return [(a, b) for a, b in itertools.combinations(kinds, 2) if is_heldout_pair(a, b)]


def heldout_positions() -> list[tuple[str, str, str]]:
    return [(a, rel, b) for a in SHAPES for b in SHAPES for rel in ("left of", "above")
            if is_heldout_position(a, rel, b)]
