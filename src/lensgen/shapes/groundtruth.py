"""The ground-truth scene of a prompt: what a perfect model would draw (ShapesEval's ceiling).

Unspecified colours are drawn at random (one per object group); a relation is laid out with a clear
margin over GenEval's threshold, so a correct judge accepts it; nothing else is added.
"""

from __future__ import annotations

import numpy as np

from lensgen.shapes.prompt import PromptSpec
from lensgen.shapes.relations import relation_vector
from lensgen.shapes.scene import (
    RADIUS_RANGE,
    Background,
    Scene,
    make_sign,
    object_box,
    place,
    random_background,
)
from lensgen.shapes.vocab import COLOUR_NAMES


def _relation_clear(scene: Scene, spec: PromptSpec, margin: float = 0.7) -> bool:
    r = spec.relation
    h, w = 1000, int(round(1000 * scene.aspect))
    starts = np.cumsum([0] + [o.count for o in spec.objects])
    for ia in range(starts[r.a], starts[r.a + 1]):
        for ib in range(starts[r.b], starts[r.b + 1]):
            dx, dy = relation_vector(object_box(scene.objects[ia], h, w), object_box(scene.objects[ib], h, w))
            along = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[r.relation]
            if along < margin:
                return False
    return True


def scene_for_prompt(spec: PromptSpec, seed: int, aspect: float = 1.0) -> Scene:
    """A scene that satisfies `spec` exactly, deterministic per seed."""
    rng = np.random.default_rng([seed, 11])
    background: Background = random_background(rng)
    n = sum(o.count for o in spec.objects)
    for attempt in range(400):
        sign = make_sign(rng, aspect, spec.text, min_ink=0.08) if spec.text else None
        if spec.text and sign is None:
            raise ValueError(f"the word '{spec.text}' does not fit on a sign at aspect {aspect:.2f}")
        lo, hi = RADIUS_RANGE[max(1, min(n + (1 if sign else 0), 6))]
        hi = hi * (1.0 - attempt / 800)  # shrink slowly if placement keeps failing
        items = []
        for req in spec.objects:
            colour = req.colour or str(rng.choice(COLOUR_NAMES))
            items += [(req.shape, colour, float(rng.uniform(lo, max(lo, hi)))) for _ in range(req.count)]
        objects = place(rng, items, aspect, sign) if items else []
        if objects is None:
            continue
        scene = Scene(objects, background, sign, float(aspect))
        if spec.relation is None or _relation_clear(scene, spec):
            return scene
    raise ValueError(f"could not lay out a scene for prompt '{spec.prompt}' at aspect {aspect:.2f}")
