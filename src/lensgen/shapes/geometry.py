"""Shape outlines as polygons, shared by the renderer and the judge's templates.

Every outline lives in the unit disc (its extent radius is 1), centred on the point the scene
places; y points down as in images. `SYMMETRY` is the rotation period in degrees: a rotation is
only visible modulo it (a circle's rotation never shows).
"""

from __future__ import annotations

import functools
import math

import numpy as np

SYMMETRY: dict[str, float] = {
    "circle": 360.0,
    "square": 90.0,
    "triangle": 120.0,
    "star": 72.0,
    "hexagon": 60.0,
    "heart": 360.0,
}


def _regular(n: int, start_deg: float) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 / n * np.arange(n))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _heart(n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2  # centre the bounding box
    return pts / np.sqrt((pts**2).sum(1)).max()


@functools.cache
def unit_outline(shape: str) -> np.ndarray:
    """(N, 2) vertices of the upright shape with extent radius 1 (read-only)."""
    if shape == "circle":
        pts = _regular(96, 0.0)
    elif shape == "square":
        pts = _regular(4, 45.0)  # axis-aligned, corners on the unit circle
    elif shape == "triangle":
        pts = _regular(3, -90.0)  # apex up
    elif shape == "star":
        outer = _regular(5, -90.0)
        inner = _regular(5, -90.0 + 36.0) * 0.5  # fat points stay readable at 64 px
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = outer, inner
    elif shape == "hexagon":
        pts = _regular(6, 0.0)
    elif shape == "heart":
        pts = _heart()
    else:
        raise ValueError(f"unknown shape '{shape}'")
    pts.setflags(write=False)
    return pts


def outline(shape: str, cx: float, cy: float, radius: float, rotation_deg: float = 0.0) -> np.ndarray:
    """Vertices of `shape` centred at (cx, cy) with extent `radius`, rotated clockwise (image coordinates)."""
    a = math.radians(rotation_deg)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return unit_outline(shape) @ rot * radius + np.array([cx, cy])


def polygon_area_centroid(pts: np.ndarray) -> tuple[float, np.ndarray]:
    """Area and centroid of a simple polygon (shoelace formula)."""
    x, y = pts[:, 0], pts[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    cxy = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)
    return abs(area), cxy
