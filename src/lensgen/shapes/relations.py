"""GenEval's relative-position rule, used by captions, the held-out split, scoring and rubrics.

GenEval compares box centres after shrinking the offset by 0.1 x the sum of both boxes' sizes on
each axis; a relation holds when the shrunk offset points mostly (cosine > 0.5) that way. One rule
everywhere means a caption never states a relation the scorer would reject.
"""

from __future__ import annotations

import math

POSITION_THRESHOLD = 0.1

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (y down)


def relation_vector(box_a: Box, box_b: Box, threshold: float = POSITION_THRESHOLD) -> tuple[float, float]:
    """(dx, dy): the shrunk offset of A's centre from B's, divided by the raw offset's length."""
    ax, ay = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
    bx, by = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
    wa, ha = box_a[2] - box_a[0], box_a[3] - box_a[1]
    wb, hb = box_b[2] - box_b[0], box_b[3] - box_b[1]
    ox, oy = ax - bx, ay - by
    norm = math.hypot(ox, oy)
    if norm == 0:
        return 0.0, 0.0
    rx = math.copysign(max(abs(ox) - threshold * (wa + wb), 0.0), ox)
    ry = math.copysign(max(abs(oy) - threshold * (ha + hb), 0.0), oy)
    if abs(rx) < 1e-3 and abs(ry) < 1e-3:
        return 0.0, 0.0
    return rx / norm, ry / norm


def relative_position(box_a: Box, box_b: Box, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """The relations of A to B that GenEval accepts: a subset of {left of, right of, above, below}."""
    dx, dy = relation_vector(box_a, box_b, threshold)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def relation_strength(box_a: Box, box_b: Box, relation: str) -> float:
    """A graded version of the rule for rewards: 0 when the relation clearly fails, 1 once it passes."""
    dx, dy = relation_vector(box_a, box_b)
    along = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[relation]
    return min(max(along / 0.5, 0.0), 1.0) if along < 0.5 else 1.0
