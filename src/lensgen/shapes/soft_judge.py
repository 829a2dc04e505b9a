"""The judge's shape reading, differentiable: gradients of "how much is this object the shape asked" for RL.

The judge (`judge.detect`) names an object's shape by the cosine of its soft mask, moved to a canonical frame,
with every shape's templates (`shapefit`), and its colour by the palette colour whose mix with the background
explains its pixels best. Only the segmentation (which pixels make an object, the background surface) and the
final argmax are discrete; the soft mask, the warp, the cosines and the colour residuals are smooth in the
pixels. Here the segmentation is the judge's own and the rest is computed again in torch, so a shape's margin
(its cosine minus the best other shape's) and a colour's (its residual against the best other colour's) have
gradients with respect to the image, which reward backpropagation (`lensgen.rl.backprop`) follows into the
model. The scores equal the judge's (tests/test_soft_judge.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lensgen.shapes.judge import METRIC, PALETTE, Region, fit_colour, is_sign, segment
from lensgen.shapes.shapefit import AREA_SIDE, GRID, template_distance, templates
from lensgen.shapes.vocab import COLOUR_NAMES, SHAPES


def _mixes(pixels: torch.Tensor, background: torch.Tensor, colours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """judge._alphas in torch: each pixel (n, 3) as a mix of each colour (K, 3) over the background, its alpha
    (K, n) and the squared residual of that mix (K, n), in the judge's luma-weighted metric."""
    metric = torch.from_numpy(METRIC).to(pixels)
    diff = (pixels - background) @ metric
    d = (colours[:, None, :] - background[None]) @ metric
    a = ((d * diff[None]).sum(-1) / (d * d).sum(-1).clamp(min=1.0)).clamp(0.0, 1.0)
    return a, (diff[None] - a[..., None] * d).square().sum(-1)


def soft_alpha(pixels: torch.Tensor, background: torch.Tensor, colour: int) -> torch.Tensor:
    """Each pixel (..., 3, in 0-255) as a mix of palette colour `colour` over the background, in [0, 1]."""
    palette = torch.from_numpy(PALETTE).to(pixels)
    shape = pixels.shape[:-1]
    alpha, _ = _mixes(pixels.reshape(-1, 3), background.reshape(-1, 3), palette[colour:colour + 1])
    return alpha[0].reshape(shape)


def colour_residuals(pixels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(len(PALETTE),) how badly each palette colour explains the pixels (n, 3) as mixes with the background:
    the judge's `fit_colour` criterion (residuals weighted by distance from the background), whose smallest
    entry is the colour the judge names. Differentiable in the pixels."""
    _, resid = _mixes(pixels, background, torch.from_numpy(PALETTE).to(pixels))
    weight = (pixels - background).square().sum(1).clamp(min=1e-12).sqrt()
    return (resid * weight[None]).sum(1)


def _area_weights(n: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, size) weights of a shrink from `size` to `n` pixels by overlapped area (cv2.INTER_AREA)."""
    edges = torch.arange(n + 1, dtype=torch.float64) * (size / n)
    pix = torch.arange(size, dtype=torch.float64)[None]
    overlap = (torch.minimum(edges[1:, None], pix + 1) - torch.maximum(edges[:-1, None], pix)).clamp(min=0)
    return (overlap / (size / n)).to(dtype)


def canonical_patch(alpha: torch.Tensor) -> torch.Tensor | None:
    """`shapefit.canonical_patch` in torch: the mask centred on its centroid and scaled to a fixed area in a
    GRID x GRID frame (large masks shrunk by area first, as cv2 does); None if it is empty."""
    mass = alpha.sum()
    if float(mass.detach()) < 1.0:
        return None
    scale = AREA_SIDE / mass.sqrt()
    if float(scale.detach()) < 1.0:
        h, w = alpha.shape
        factor = float(scale.detach())
        nh, nw = max(2, int(round(h * factor))), max(2, int(round(w * factor)))
        alpha = _area_weights(nh, h, alpha.dtype) @ alpha @ _area_weights(nw, w, alpha.dtype).T
        mass = alpha.sum()
        if float(mass.detach()) < 1.0:
            return None
        scale = AREA_SIDE / mass.sqrt()
    h, w = alpha.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=alpha.dtype), torch.arange(w, dtype=alpha.dtype), indexing="ij")
    cx, cy = (xs * alpha).sum() / mass, (ys * alpha).sum() / mass
    out = torch.arange(GRID, dtype=alpha.dtype) - (GRID - 1) / 2
    gx = 2 * (out / scale + cx) / max(w - 1, 1) - 1  # each output pixel's source, as grid_sample reads it
    gy = 2 * (out / scale + cy) / max(h - 1, 1) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)[None]
    return F.grid_sample(alpha[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]


@functools.cache
def _templates_by_shape() -> tuple[torch.Tensor, ...]:
    names, _, unit, _ = templates()
    rows = torch.from_numpy(unit)
    return tuple(rows[[i for i, n in enumerate(names) if n == s]] for s in SHAPES)


def shape_scores(alpha: torch.Tensor) -> torch.Tensor | None:
    """(len(SHAPES),) the best template cosine of every shape for a soft mask (differentiable); None if empty."""
    patch = canonical_patch(alpha)
    if patch is None:
        return None
    v = patch.flatten()
    v = v / v.norm().clamp(min=1e-8)
    return torch.stack([(t.to(v) @ v).max() for t in _templates_by_shape()])


@dataclass
class SoftObject:
    """One object as the judge reads it, differentiable: every shape's best template cosine and every palette
    colour's residual (the judge names the largest cosine and the smallest residual)."""

    shapes: torch.Tensor  # (len(SHAPES),)
    colours: torch.Tensor  # (len(COLOUR_NAMES),)


@dataclass
class Segmented:
    """An image as the judge segments it: its pixels ((H, W, 3) in 0-255, differentiable), the same as the
    judge reads them, the background surface (None: too little of it visible) and the candidate objects."""

    pixels: torch.Tensor
    img: np.ndarray
    background: np.ndarray | None
    regions: list[Region]


def segmented(image: torch.Tensor) -> Segmented:
    """`judge.segment` of an image ((3, H, W) in [-1, 1]); shapes and signs are both read off it."""
    pixels = (image.permute(1, 2, 0).float() + 1) * 127.5
    img = pixels.detach().cpu().numpy()
    background, regions, _ = segment(img)
    return Segmented(pixels, img, background, regions)


def soft_objects(image: torch.Tensor, seg: Segmented | None = None) -> list[SoftObject]:
    """Every object the judge finds in an image ((3, H, W) in [-1, 1]; `seg`: its segmentation, when already
    made), in the order `judge.detect` lists them (signs and specks left out, as it leaves them),
    differentiable in the image."""
    seg = segmented(image) if seg is None else seg
    pixels, img, background = seg.pixels, seg.img, seg.background
    if background is None:
        return []
    bg = torch.from_numpy(background).to(pixels)
    out = []
    for r in seg.regions:
        if is_sign(img, r):
            continue
        x0, y0, x1, y1 = r.window
        colour, _ = fit_colour(img[y0:y1, x0:x1][r.region], background[y0:y1, x0:x1][r.region])
        crop, crop_bg, region = pixels[y0:y1, x0:x1], bg[y0:y1, x0:x1], torch.from_numpy(r.region)
        alpha = soft_alpha(crop, crop_bg, colour) * region.to(pixels)
        scores = shape_scores(alpha)
        if scores is not None:
            step = max(1, int(region.sum()) // 1500)  # the pixels the judge's colour choice reads
            out.append(SoftObject(scores, colour_residuals(crop[region][::step], crop_bg[region][::step])))
    return out


@functools.cache
def margin_scale(shape: str) -> float:
    """How far the judge holds `shape` from its nearest other shape (hexagon-circle 0.011, star 0.18 from the
    nearest): margins divided by it weigh every shape alike."""
    return min(template_distance(shape, other) for other in SHAPES if other != shape)


def shape_margin(obj: SoftObject, shape: str) -> torch.Tensor:
    """The object's cosine with `shape` minus its best other shape's, over `margin_scale(shape)`: > 0 when the
    judge reads it as that shape."""
    k = SHAPES.index(shape)
    return (obj.shapes[k] - torch.cat([obj.shapes[:k], obj.shapes[k + 1:]]).max()) / margin_scale(shape)


def colour_margin(obj: SoftObject, colour: str) -> torch.Tensor:
    """log10 of the best other colour's residual over `colour`'s (each + 1): > 0 when the judge names that
    colour, 1 when it explains the object ten times better than any other. A log, not a difference over the
    sum: an object drawn in another colour exactly (residual ~0) still has a gradient toward the asked one."""
    k = COLOUR_NAMES.index(colour)
    other = torch.cat([obj.colours[:k], obj.colours[k + 1:]]).min()
    return torch.log10((other + 1.0) / (obj.colours[k] + 1.0))


def asked_objects(rubric) -> list[tuple[str, str | None]]:
    """One (shape, colour or None) per object a prompt's rubric asks for: its count items' groups, or, where the
    rubric has no count item for every asked object, `expected`'s shapes without colours."""
    groups = [(it.params["shape"], it.params.get("colour"), int(it.params["count"]))
              for it in rubric.items if it.kind == "count"]
    if sum(n for _, _, n in groups) == sum(rubric.expected.values()):
        return [(shape, colour) for shape, colour, n in groups for _ in range(n)]
    return [(shape, None) for shape, n in rubric.expected.items() for _ in range(n)]


@dataclass
class Match:
    """An object matched to an asked one: its shape margin and, where a colour was asked, its colour margin."""

    shape: torch.Tensor
    colour: torch.Tensor | None


def match_objects(objects: list[SoftObject], asked: list[tuple[str, str | None]], cap: float) -> list[Match]:
    """Objects matched to asked ones greedily, the largest capped margin (shape plus colour) first, one object
    per asked one. An asked object with nothing left to match stays unmatched: it was not drawn."""
    pairs = []
    for i, obj in enumerate(objects):
        for j, (shape, colour) in enumerate(asked):
            m = Match(shape_margin(obj, shape), colour_margin(obj, colour) if colour else None)
            value = float(m.shape.detach().clamp(max=cap)) + (float(m.colour.detach().clamp(max=cap))
                                                               if m.colour is not None else 0.0)
            pairs.append((value, i, j, m))
    pairs.sort(key=lambda p: -p[0])
    used_objects, used_asked, chosen = set(), set(), []
    for _, i, j, m in pairs:
        if i not in used_objects and j not in used_asked:
            used_objects.add(i)
            used_asked.add(j)
            chosen.append(m)
    return chosen


def margin_reward(matches: list[Match], cap: float, colour_weight: float = 1.0) -> torch.Tensor | None:
    """The mean over matched objects of the shape margin plus `colour_weight` times the colour margin (where a
    colour was asked), each capped at `cap` so that what the judge already reads right is pushed no further;
    None when nothing was matched."""
    if not matches:
        return None
    terms = [m.shape.clamp(max=cap) + (colour_weight * m.colour.clamp(max=cap) if m.colour is not None else 0.0)
             for m in matches]
    return torch.stack(terms).mean()


__all__ = ["Match", "Segmented", "SoftObject", "asked_objects", "canonical_patch", "colour_margin", "colour_residuals",
           "margin_reward", "margin_scale", "match_objects", "shape_margin", "shape_scores", "soft_alpha",
           "segmented", "soft_objects"]
