"""Scene specs and the seeded scene generator.

A scene is laid out for an aspect ratio in "short-side units" (the image's short side is 1), so
shapes keep their form at any size: positions are stored as fractions of width and height, sizes
as fractions of the short side. Objects never overlap: their extent circles keep a gap, which the
judge needs to separate them. Radii shrink as the object count grows, but never below
`min_radius` (about 6 px on a 48 px short side, the smallest side of the 64 px class).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from lensgen.shapes import font, heldout
from lensgen.shapes.geometry import SYMMETRY, outline
from lensgen.shapes.relations import relative_position
from lensgen.shapes.vocab import BACKGROUND_LEVELS, COLOUR_NAMES, RELATIONS, SHAPES, WORDS

BACKGROUND_KINDS = ("plain", "gradient", "stripes", "checks", "dots")
GRADIENT_DIRECTIONS = ("top to bottom", "left to right", "diagonal")
# (min, max) extent radius by object count, in short-side units.
RADIUS_RANGE = {1: (0.18, 0.34), 2: (0.15, 0.28), 3: (0.13, 0.24), 4: (0.12, 0.2), 5: (0.12, 0.17), 6: (0.12, 0.15)}
MARGIN = 0.03  # between objects and the image border


@dataclass
class ObjectSpec:
    shape: str
    colour: str
    x: float  # centre, fraction of the width
    y: float  # centre, fraction of the height
    radius: float  # extent radius, fraction of the short side
    rotation: float = 0.0  # degrees clockwise, within the shape's symmetry period


@dataclass
class Sign:
    """A white board with a word in black capitals; axis-aligned so text stays readable."""

    word: str
    x: float
    y: float
    width: float  # fractions of the short side
    height: float


@dataclass
class Background:
    kind: str = "plain"  # one of BACKGROUND_KINDS
    level: int = 140  # grey level (start of a gradient)
    level2: int = 140  # end of a gradient
    direction: str = "top to bottom"
    period: float = 0.1  # texture period, short-side units


@dataclass
class Scene:
    objects: list[ObjectSpec]
    background: Background = field(default_factory=Background)
    sign: Sign | None = None
    aspect: float = 1.0  # width / height the layout was made for

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            objects=[ObjectSpec(**o) for o in d["objects"]],
            background=Background(**d.get("background", {})),
            sign=Sign(**d["sign"]) if d.get("sign") else None,
            aspect=float(d.get("aspect", 1.0)),
        )


@dataclass
class SceneConfig:
    """How the generator draws scenes (typed, so a dataset's summary records it)."""

    min_objects: int = 1
    max_objects: int = 6
    count_weights: tuple[float, ...] = (3.0, 3.0, 3.0, 2.0, 1.5, 1.0)  # relative frequency of 1..6 objects
    p_repeat: float = 0.35  # a new object copies an earlier one's shape and colour (gives counts)
    p_text: float = 0.2
    max_objects_with_text: int = 3
    p_upright: float = 0.5
    min_radius: float = 0.12
    gap: float = 0.05  # between extent circles, short-side units

    def __post_init__(self):
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 6, got {self.min_objects}..{self.max_objects}")


def canvas(aspect: float) -> tuple[float, float]:
    """(width, height) in short-side units."""
    return (aspect, 1.0) if aspect >= 1 else (1.0, 1.0 / aspect)


def to_pixels(obj: ObjectSpec, height: int, width: int) -> tuple[float, float, float]:
    return obj.x * width, obj.y * height, obj.radius * min(height, width)


def object_box(obj: ObjectSpec, height: int, width: int) -> tuple[float, float, float, float]:
    """Tight pixel box (x0, y0, x1, y1) of the rendered outline."""
    cx, cy, r = to_pixels(obj, height, width)
    pts = outline(obj.shape, cx, cy, r, obj.rotation)
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return float(x0), float(y0), float(x1), float(y1)


def sign_box(sign: Sign, height: int, width: int) -> tuple[float, float, float, float]:
    s = min(height, width)
    cx, cy = sign.x * width, sign.y * height
    return cx - sign.width * s / 2, cy - sign.height * s / 2, cx + sign.width * s / 2, cy + sign.height * s / 2


def random_rotation(rng: np.random.Generator, shape: str, p_upright: float) -> float:
    if shape == "circle" or rng.random() < p_upright:
        return 0.0
    if shape == "heart":  # a heart keeps roughly upright
        return float(rng.uniform(-30, 30)) % 360
    return float(rng.uniform(0, SYMMETRY[shape]))


def random_background(rng: np.random.Generator) -> Background:
    lo, hi = BACKGROUND_LEVELS
    kind = str(rng.choice(BACKGROUND_KINDS, p=[0.4, 0.3, 0.1, 0.1, 0.1]))
    level = int(rng.integers(lo, hi + 1))
    level2 = level
    if kind == "gradient":
        while abs(level2 - level) < 30:
            level2 = int(rng.integers(lo, hi + 1))
    return Background(kind, level, level2, str(rng.choice(GRADIENT_DIRECTIONS)), float(rng.uniform(0.08, 0.14)))


def random_sign(rng: np.random.Generator, aspect: float, words: tuple[str, ...]) -> Sign:
    for _ in range(50):
        word = str(rng.choice(words))
        sign = make_sign(rng, aspect, word)
        if sign is not None:
            return sign
    raise RuntimeError("no word fits on a sign at this aspect ratio")


def make_sign(rng: np.random.Generator, aspect: float, word: str, min_ink: float = 0.13) -> Sign | None:
    """A sign for `word`: letters 0.15-0.22 of the short side tall (legible at 48 px), fitted to the width."""
    wn, hn = canvas(aspect)
    ratio = font.ink_ratio(word)
    ink = min(float(rng.uniform(0.15, 0.22)), 0.9 * wn / (ratio + 0.8))
    if ink < min_ink:
        return None
    sw, sh = ink * (ratio + 0.8), ink * 1.8
    u = rng.uniform(sw / 2 + MARGIN, wn - sw / 2 - MARGIN) if wn - sw > 2 * MARGIN else wn / 2
    v = rng.uniform(sh / 2 + MARGIN, hn - sh / 2 - MARGIN)
    return Sign(word, float(u / wn), float(v / hn), float(sw), float(sh))


def _clear_of_sign(u: np.ndarray, v: np.ndarray, r: float, sign: Sign | None, wn: float, hn: float,
                   gap: float) -> np.ndarray:
    if sign is None:
        return np.ones(u.shape, bool)
    dx = np.maximum(np.abs(u - sign.x * wn) - sign.width / 2, 0.0)
    dy = np.maximum(np.abs(v - sign.y * hn) - sign.height / 2, 0.0)
    return np.hypot(dx, dy) >= r + gap


def place(
    rng: np.random.Generator,
    items: list[tuple[str, str, float]],
    aspect: float,
    sign: Sign | None = None,
    gap: float = 0.05,
    p_upright: float = 0.5,
    tries: int = 256,
) -> list[ObjectSpec] | None:
    """Place (shape, colour, radius) items without overlap (largest first); None if they do not fit.

    Each item draws `tries` candidate centres at once and takes the first that clears the others.
    """
    wn, hn = canvas(aspect)
    placed: list[tuple[float, float, float]] = []
    specs: list[ObjectSpec | None] = [None] * len(items)
    for i in sorted(range(len(items)), key=lambda k: -items[k][2]):
        shape, colour, r = items[i]
        if 2 * (r + MARGIN) > min(wn, hn):
            return None
        u = rng.uniform(r + MARGIN, wn - r - MARGIN, tries)
        v = rng.uniform(r + MARGIN, hn - r - MARGIN, tries)
        ok = _clear_of_sign(u, v, r, sign, wn, hn, gap)
        for pu, pv, pr in placed:
            ok &= np.hypot(u - pu, v - pv) >= r + pr + gap
        if not ok.any():
            return None
        k = int(np.argmax(ok))
        placed.append((float(u[k]), float(v[k]), r))
        specs[i] = ObjectSpec(shape, colour, float(u[k] / wn), float(v[k] / hn), float(r),
                              random_rotation(rng, shape, p_upright))
    return specs  # type: ignore[return-value]


def _sample_scene(rng: np.random.Generator, aspect: float, cfg: SceneConfig, words: tuple[str, ...]) -> Scene:
    background = random_background(rng)
    sign = random_sign(rng, aspect, words) if rng.random() < cfg.p_text else None
    hi = min(cfg.max_objects, cfg.max_objects_with_text) if sign else cfg.max_objects
    lo = min(cfg.min_objects, hi)
    weights = np.array(cfg.count_weights[lo - 1 : hi])
    n = int(rng.choice(np.arange(lo, hi + 1), p=weights / weights.sum()))
    kinds: list[tuple[str, str]] = []
    for _ in range(n):
        if kinds and rng.random() < cfg.p_repeat:
            kinds.append(kinds[int(rng.integers(len(kinds)))])
        else:
            kinds.append((str(rng.choice(SHAPES)), str(rng.choice(COLOUR_NAMES))))
    while True:  # shrink the scene until it fits (more objects fit when smaller)
        r_lo, r_hi = RADIUS_RANGE[min(n + (1 if sign else 0), 6)]  # a sign takes an object's room
        r_lo = max(r_lo, cfg.min_radius)
        items = [(s, c, float(rng.uniform(r_lo, max(r_lo, r_hi)))) for s, c in kinds]
        for attempt in range(10):
            objects = place(rng, items, aspect, sign, cfg.gap, cfg.p_upright)
            if objects is not None:
                return Scene(objects, background, sign, float(aspect))
            if sign is not None and attempt % 2:  # move the sign (same word) before giving up objects
                sign = make_sign(rng, aspect, sign.word) or sign
        if len(kinds) > max(1, lo):
            kinds.pop()
            n -= 1
        elif sign is not None:
            sign = None
        else:
            raise RuntimeError("cannot place a single object; the canvas is too small for min_radius")


def scene_is_heldout(scene) -> bool:
    """True when a scene is (or contains, for words) a ShapesEval scene; the training generator rejects it."""
    if scene.sign is not None and scene.sign.word in heldout.HELDOUT_WORDS:
        return True
    if len(scene.objects) != 2:
        return False
    a, b = scene.objects
    if heldout.is_heldout_pair((a.colour, a.shape), (b.colour, b.shape)):
        return True
    h, w = 1000, int(round(1000 * scene.aspect))
    rels = relative_position(object_box(a, h, w), object_box(b, h, w))
    return any(heldout.is_heldout_position(a.shape, rel, b.shape) for rel in rels if rel in RELATIONS)


def generate_scene(seed: int | tuple[int, ...] | np.random.Generator, aspect: float = 1.0,
                   config: SceneConfig | None = None, split: str = "train") -> Scene:
    """A random scene, fully determined by `seed` (an int, a tuple of ints, or a Generator) and the rest.

    Pass the aspect (width / height) of the size it will be rendered at: the layout is made for it.

    split="train" rejects scenes reserved for ShapesEval (see heldout.py) so nothing leaks into training;
    split="any" draws from the whole world (benchmarks of the judge).
    """
    if split not in ("train", "any"):
        raise ValueError(f"split must be 'train' or 'any', got '{split}'")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cfg = config or SceneConfig()
    words = heldout.TRAIN_WORDS if split == "train" else WORDS
    while True:
        scene = _sample_scene(rng, aspect, cfg, words)
        if split == "any" or not scene_is_heldout(scene):
            return scene
