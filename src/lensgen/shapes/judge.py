"""`detect`: read an image (rendered or generated) back into objects, colours, boxes and sign text.

Classical vision, no trained model:
1. the background is the low-saturation mid-grey surface; a quadratic fit per channel follows
   gradients, and textures stay below the foreground threshold;
2. foreground = pixels far from that surface; connected components are candidate objects (objects
   in the world never touch, so one component is one object);
3. a white, wide, full rectangle is a sign; anything else gets the palette colour that best explains
   its pixels as a mix of that colour and the local background (edge pixels included), which yields a
   soft mask;
4. the soft mask's shape is read by template matching in a canonical frame (shapefit.py).
OCR (ocr.py) runs only when asked, on the sign's crop.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from PIL import Image

from lensgen.shapes.geometry import polygon_area_centroid, unit_outline
from lensgen.shapes.scene import Background, ObjectSpec, Scene
from lensgen.shapes.shapefit import classify
from lensgen.shapes.vocab import COLOUR_NAMES, COLOURS

FG_THRESHOLD = 40.0  # RGB distance from the background surface that makes a pixel foreground
CORE_DISTANCE = 60.0  # a real object has a solid core well beyond the threshold (every colour is >= 80 away)
MIN_SCORE = 0.85  # template cosine below this: a malformed blob, not a recognisable shape
# RGB -> YCbCr with chroma down-weighted: JPEG and video codecs keep luma sharp but blur chroma,
# so alphas (hence shapes) lean on luma where it has contrast.
METRIC = (np.array([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]], np.float32).T
          * np.array([1.0, 0.5, 0.5], np.float32))
PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)


@dataclass
class DetectedObject:
    shape: str | None  # None: a malformed blob that matches no shape
    colour: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (edges), pixels with alpha >= 0.5
    centre: tuple[float, float]  # alpha-weighted centroid, pixels
    area: float  # soft area, pixels
    score: float  # template cosine similarity
    quality: float  # soft Dice with the best template: 1 = a clean shape
    rotation: float = 0.0
    shape_scores: dict[str, float] = field(default_factory=dict)  # best template cosine of every shape


@dataclass
class Detection:
    height: int
    width: int
    objects: list[DetectedObject] = field(default_factory=list)
    signs: list[tuple[float, float, float, float]] = field(default_factory=list)
    text: str | None = None  # None: OCR not run
    fragments: int = 0  # foreground specks too small to be objects
    background_ok: bool = True

    def shapes(self) -> list[DetectedObject]:
        """Recognised objects (malformed blobs excluded), best-formed first."""
        return sorted((o for o in self.objects if o.shape), key=lambda o: -o.score)

    def of(self, shape: str, colour: str | None = None) -> list[DetectedObject]:
        return [o for o in self.shapes() if o.shape == shape and (colour is None or o.colour == colour)]

    def counts(self) -> Counter:
        return Counter((o.colour, o.shape) for o in self.shapes())

    def to_dict(self) -> dict:
        return asdict(self)

    def as_scene(self) -> Scene:
        """The detection as a scene spec (radius from the area of the recognised shape)."""
        short = min(self.height, self.width)
        objs = []
        for o in self.shapes():
            unit_area, _ = polygon_area_centroid(unit_outline(o.shape))
            objs.append(ObjectSpec(o.shape, o.colour, o.centre[0] / self.width, o.centre[1] / self.height,
                                   float(np.sqrt(o.area / unit_area) / short), o.rotation))
        return Scene(objs, Background(), None, self.width / self.height)


_FIT_GRID = 48  # the background is smooth: fit it on a small area-averaged copy


@functools.lru_cache(maxsize=32)
def _design(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    x, y = (x / width - 0.5).ravel(), (y / height - 0.5).ravel()
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _evaluate(coef: np.ndarray, height: int, width: int) -> np.ndarray:
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width - 0.5)[None, :, None]
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height - 0.5)[:, None, None]
    c = coef.astype(np.float32)
    return c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * x * y + c[5] * y * y


def fit_background(img: np.ndarray) -> np.ndarray | None:
    """(H, W, 3) smooth estimate of the grey background, or None if too little of it is visible."""
    h, w, _ = img.shape
    sh, sw = min(h, _FIT_GRID), min(w, _FIT_GRID)
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA) if (sh, sw) != (h, w) else img
    flat = small.reshape(-1, 3)
    chroma = flat.max(1) - flat.min(1)
    mean = flat.mean(1)
    cand = np.flatnonzero((chroma < 24) & (mean > 75) & (mean < 200))
    if cand.size < 0.05 * sh * sw:
        return None
    design = _design(sh, sw)
    for _ in range(2):
        a, b = design[cand], flat[cand]  # normal equations: a 6x6 solve (lstsq's LAPACK path is far slower)
        coef = np.linalg.solve(a.T @ a + 1e-6 * np.eye(6, dtype=np.float32), a.T @ b)
        resid = np.sqrt(((b - a @ coef) ** 2).sum(1))
        keep = cand[resid < 25]
        if keep.size < 0.05 * sh * sw:
            break
        cand = keep
    return _evaluate(coef, h, w)


def _alphas(pix: np.ndarray, bg: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alpha of each pixel as a mix of each colour over the background (K, n), and the residuals (K, n)."""
    diff = (pix - bg) @ METRIC  # (n, 3), in luma-weighted YCbCr
    d = (colours[:, None, :] - bg[None]) @ METRIC  # (K, n, 3)
    a = np.clip((d * diff[None]).sum(-1) / np.maximum((d * d).sum(-1), 1.0), 0.0, 1.0)
    resid = ((diff[None] - a[..., None] * d) ** 2).sum(-1)
    return a, resid


def fit_colour(pix: np.ndarray, bg: np.ndarray) -> tuple[int, np.ndarray]:
    """Palette index best explaining pixels as alpha-mixes of colour and background, and all pixels' alphas.

    Residuals are weighted by distance from the background, so pure object pixels decide; the choice
    uses at most ~1,500 pixels (large objects are subsampled), the alphas cover every pixel.
    """
    step = max(1, pix.shape[0] // 1500)
    sub, subbg = pix[::step], bg[::step]
    _, resid = _alphas(sub, subbg, PALETTE)
    weight = np.sqrt(((sub - subbg) ** 2).sum(1))
    k = int(np.argmin((resid * weight[None]).sum(1)))
    a, _ = _alphas(pix, bg, PALETTE[k : k + 1])
    return k, a[0]


def _is_sign(region: np.ndarray, crop: np.ndarray, w: int, h: int, area: int) -> bool:
    if w < 1.4 * h or area < 0.75 * w * h:
        return False
    pix = crop[region]
    white = (pix.mean(1) > 185) & (pix.max(1) - pix.min(1) < 60)
    return white.mean() > 0.2  # small signs with long words are mostly letters


@dataclass
class Region:
    """One candidate object of the segmentation: its connected component and the pixels its colour is fitted on."""

    box: tuple[int, int, int, int]  # x, y, width, height of the component
    area: int  # pixels of the component
    window: tuple[int, int, int, int]  # x0, y0, x1, y1: the box grown by 2 px, clipped to the image
    own: np.ndarray  # (y1 - y0, x1 - x0) bool: the component's pixels in the window
    region: np.ndarray  # the same grown by one pixel (edges included), without other components' pixels


def segment(img: np.ndarray) -> tuple[np.ndarray | None, list[Region], int]:
    """Steps 1-2 of `detect` on an (H, W, 3) float image: the background surface (None if too little of it is
    visible), the candidate objects (signs still among them) and the count of foreground fragments."""
    h, w, _ = img.shape
    bg = fit_background(img)
    if bg is None:
        return None, [], 0
    dist = np.sqrt(((img - bg) ** 2).sum(2))
    fg = (dist > FG_THRESHOLD).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    short = min(h, w)
    min_area = max(8, int(0.004 * short * short))
    kernel = np.ones((3, 3), np.uint8)
    regions, fragments = [], 0
    for k in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[k])
        if area < min_area:
            fragments += area >= 3
            continue
        if area > 0.6 * h * w:
            continue
        x0, y0, x1, y1 = max(0, x - 2), max(0, y - 2), min(w, x + bw + 2), min(h, y + bh + 2)
        lab = labels[y0:y1, x0:x1]
        own = lab == k
        if np.percentile(dist[y0:y1, x0:x1][own], 75) < CORE_DISTANCE:
            fragments += 1  # a cluster of noise just over the threshold: no solid core
            continue
        region = cv2.dilate(own.astype(np.uint8), kernel).astype(bool) & ((lab == 0) | (lab == k))
        regions.append(Region((x, y, bw, bh), area, (x0, y0, x1, y1), own, region))
    return bg, regions, fragments


def is_sign(img: np.ndarray, r: Region) -> bool:
    """Whether a candidate object is a sign (a white, wide, full rectangle) rather than a shape."""
    x0, y0, x1, y1 = r.window
    return _is_sign(r.own, img[y0:y1, x0:x1], r.box[2], r.box[3], r.area)


def detect(image: Image.Image | np.ndarray, ocr: bool = False, read_unsigned: bool = True) -> Detection:
    """Read an image into a Detection; `ocr=True` also reads sign text (~0.04 s a sign; without a sign found,
    the whole image is read, ~0.5 s, unless `read_unsigned` is False: then no sign reads as no text)."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    h, w, _ = img.shape
    det = Detection(h, w)
    bg, regions, det.fragments = segment(img)
    if bg is None:
        det.background_ok = False
        if ocr:
            det.text = _read(image, None) if read_unsigned else ""
        return det
    for r in regions:
        x, y, bw, bh = r.box
        x0, y0, x1, y1 = r.window
        if is_sign(img, r):
            det.signs.append((float(x), float(y), float(x + bw), float(y + bh)))
            continue
        crop, bgc = img[y0:y1, x0:x1], bg[y0:y1, x0:x1]
        ci, a = fit_colour(crop[r.region], bgc[r.region])
        alpha = np.zeros(r.region.shape, np.float32)
        alpha[r.region] = a
        match = classify(alpha)
        if match is None:
            continue
        mass = float(alpha.sum())
        ys, xs = np.mgrid[y0:y1, x0:x1]
        centre = (float(((xs + 0.5) * alpha).sum() / mass), float(((ys + 0.5) * alpha).sum() / mass))
        rows, cols = np.nonzero(alpha >= 0.5)
        box = (float(x0 + cols.min()), float(y0 + rows.min()), float(x0 + cols.max() + 1),
               float(y0 + rows.max() + 1)) if rows.size else (float(x), float(y), float(x + bw), float(y + bh))
        det.objects.append(DetectedObject(
            match.shape if match.score >= MIN_SCORE else None, COLOUR_NAMES[ci], box, centre, mass,
            match.score, match.dice, match.rotation, match.per_shape))
    if ocr:
        if det.signs:
            det.text = "".join(_read(image, box, read_unsigned) for box in sorted(det.signs))
        else:
            det.text = _read(image, None) if read_unsigned else ""
    return det


def _read(image, box, whole_image: bool = True) -> str:
    from lensgen.shapes.ocr import read_text

    return read_text(image, box, whole_image)
