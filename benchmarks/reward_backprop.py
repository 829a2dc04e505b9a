"""Does the judge's own gradient teach the shapes that a scalar reward does not? Reward backpropagation, measured.

DiffusionNFT (`lensgen rl`) learns from one number per image; on this model it stops with stars and hexagons
mostly unread (docs/rl-shapes-measurements.md). The judge reads a shape by the cosine of the object's soft mask,
moved to a canonical frame, with every shape's templates (`lensgen.shapes.shapefit`); every step of that is
differentiable but the segmentation. Here the segmentation (which pixels make an object, its palette colour, the
background surface) comes from the judge as it is, and the rest is done again in torch: the soft alpha of the
object's pixels, the canonical warp and the template cosines. The reward of an object is its margin: the cosine
with the shape the prompt asks of it minus the best other shape's, divided by how far the judge holds the asked
shape from its nearest other (a hexagon is 0.011 from a circle, a star 0.18 from a triangle), and capped, so a
shape read right is no longer pushed. Its gradient runs through the VAE decoder and the whole sampling chain
(DPM-Solver++ 2M, CFG-free, as the model samples) into the transformer (DRaFT, Clark et al. 2023; AlignProp),
with a pull toward the starting model's velocity at every state visited.

Objects are matched to the prompt's asked shapes greedily by margin; an asked object that is not drawn at all
gives no gradient (the reward cannot make an object appear), and sign prompts are left out. The run prints the
reward and the judge's hard reading every `--log-every` steps and saves the model (with the starting folder's
classifier) to `--out` for `lensgen eval shapes --model OUT`.

    python benchmarks/reward_backprop.py runs/rl-clf-120/final --prompts runs/rl-prompts.jsonl --steps 300 \\
        --classifier-from shapes-tiny --out runs/reward-backprop
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lensgen.data.rl_prompts import load_rl_prompts
from lensgen.inference.pipeline import LensPipeline, model_dir
from lensgen.io import atomic_write_json
from lensgen.shapes import judge as J
from lensgen.shapes.shapefit import AREA_SIDE, GRID, template_distance, templates
from lensgen.shapes.vocab import SHAPES
from lensgen.train.ema import EMA


def nearest_distance() -> dict[str, float]:
    """How far the judge holds each shape from its nearest other shape (1 - best template cosine)."""
    return {s: min(template_distance(s, o) for o in SHAPES if o != s) for s in SHAPES}


def components(img: np.ndarray) -> tuple[np.ndarray | None, list[tuple[np.ndarray, tuple[int, int, int, int], int]]]:
    """The judge's segmentation of an (H, W, 3) float image: its background surface, and for every object
    (signs and specks left out, as `judge.detect` leaves them) the pixels of its region, its box and palette
    colour index."""
    h, w, _ = img.shape
    bg = J.fit_background(img)
    if bg is None:
        return None, []
    dist = np.sqrt(((img - bg) ** 2).sum(2))
    n, labels, stats, _ = cv2.connectedComponentsWithStats((dist > J.FG_THRESHOLD).astype(np.uint8), connectivity=8)
    min_area = max(8, int(0.004 * min(h, w) ** 2))
    kernel = np.ones((3, 3), np.uint8)
    out = []
    for k in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[k])
        if area < min_area or area > 0.6 * h * w:
            continue
        x0, y0, x1, y1 = max(0, x - 2), max(0, y - 2), min(w, x + bw + 2), min(h, y + bh + 2)
        lab = labels[y0:y1, x0:x1]
        own = (lab == k).astype(np.uint8)
        if np.percentile(dist[y0:y1, x0:x1][own.astype(bool)], 75) < J.CORE_DISTANCE:
            continue
        region = cv2.dilate(own, kernel).astype(bool) & ((lab == 0) | (lab == k))
        crop, bgc = img[y0:y1, x0:x1], bg[y0:y1, x0:x1]
        if J._is_sign(own.astype(bool), crop, bw, bh, area):
            continue
        colour, _ = J._fit_colour(crop[region], bgc[region])
        out.append((region, (x0, y0, x1, y1), colour))
    return bg, out


_METRIC = torch.from_numpy(J._METRIC)
_PALETTE = torch.from_numpy(J._PALETTE)


def soft_alpha(pix: torch.Tensor, bg: torch.Tensor, colour: int) -> torch.Tensor:
    """judge._alphas for one palette colour, in torch: each pixel as a mix of the colour over the background."""
    diff = (pix - bg) @ _METRIC
    d = (_PALETTE[colour] - bg) @ _METRIC
    return ((d * diff).sum(-1) / (d * d).sum(-1).clamp(min=1.0)).clamp(0.0, 1.0)


def _area_weights(n: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, size) averaging weights of a shrink from size to n pixels by overlapped area (cv2.INTER_AREA)."""
    edges = torch.arange(n + 1, dtype=torch.float64) * (size / n)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = torch.arange(size, dtype=torch.float64)[None]
    overlap = (torch.minimum(hi, pix + 1) - torch.maximum(lo, pix)).clamp(min=0)
    return (overlap / (size / n)).to(dtype)


def canonical_patch(alpha: torch.Tensor) -> torch.Tensor | None:
    """shapefit.canonical_patch in torch (area-averaged shrink, then the centring and scaling warp)."""
    mass = alpha.sum()
    if float(mass.detach()) < 1.0:
        return None
    scale = AREA_SIDE / mass.sqrt()
    if float(scale.detach()) < 1.0:
        h, w = alpha.shape
        size = (max(2, int(round(h * float(scale.detach())))), max(2, int(round(w * float(scale.detach())))))
        alpha = _area_weights(size[0], h, alpha.dtype) @ alpha @ _area_weights(size[1], w, alpha.dtype).T
        mass = alpha.sum()
        if float(mass.detach()) < 1.0:
            return None
        scale = AREA_SIDE / mass.sqrt()
    h, w = alpha.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=alpha.dtype), torch.arange(w, dtype=alpha.dtype), indexing="ij")
    cx, cy = (xs * alpha).sum() / mass, (ys * alpha).sum() / mass
    c = (GRID - 1) / 2
    u = torch.arange(GRID, dtype=alpha.dtype)
    sx = (u - c) / scale + cx  # the source pixel of each output pixel (cv2's inverse map)
    sy = (u - c) / scale + cy
    gx = 2 * sx / max(w - 1, 1) - 1
    gy = 2 * sy / max(h - 1, 1) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)[None]
    return F.grid_sample(alpha[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]


_TEMPLATES = None


def shape_scores(alpha: torch.Tensor) -> torch.Tensor | None:
    """(len(SHAPES),) best template cosine of every shape for a soft mask, differentiable; None if empty."""
    global _TEMPLATES
    if _TEMPLATES is None:
        names, _, unit, _ = templates()
        rows = torch.from_numpy(unit)
        _TEMPLATES = [rows[[i for i, n in enumerate(names) if n == s]] for s in SHAPES]
    patch = canonical_patch(alpha)
    if patch is None:
        return None
    v = patch.flatten()
    v = v / v.norm().clamp(min=1e-8)
    return torch.stack([(t @ v).max() for t in _TEMPLATES])


def image_objects(image: torch.Tensor) -> list[torch.Tensor]:
    """Every object's differentiable shape scores in an image (3, H, W) in [-1, 1]."""
    pixels = (image.permute(1, 2, 0) + 1) * 127.5
    bg, objects = components(pixels.detach().numpy().astype(np.float32))
    if bg is None:
        return []
    bg_t = torch.from_numpy(bg)
    out = []
    for region, (x0, y0, x1, y1), colour in objects:
        crop = pixels[y0:y1, x0:x1]
        alpha = soft_alpha(crop, bg_t[y0:y1, x0:x1], colour) * torch.from_numpy(region).to(crop.dtype)
        scores = shape_scores(alpha)
        if scores is not None:
            out.append(scores)
    return out


def margin_reward(objects: list[torch.Tensor], expected: dict[str, int], scale: dict[str, float],
                  cap: float) -> tuple[torch.Tensor | None, list[bool]]:
    """Mean capped, scaled margin of the objects matched (greedily) to the asked shapes, and whether each match
    is read as asked (margin > 0). None when no asked shape has an object to match."""
    wanted = [s for s, n in expected.items() for _ in range(n)]
    pairs = []
    for i, scores in enumerate(objects):
        for j, shape in enumerate(wanted):
            k = SHAPES.index(shape)
            others = torch.cat([scores[:k], scores[k + 1:]])
            pairs.append(((scores[k] - others.max()) / scale[shape], i, j))
    pairs.sort(key=lambda p: -float(p[0].detach()))
    used_i, used_j, chosen = set(), set(), []
    for m, i, j in pairs:
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            chosen.append(m)
    if not chosen:
        return None, []
    return torch.stack([m.clamp(max=cap) for m in chosen]).mean(), [float(m) > 0 for m in chosen]


def sigmas_for(pipe: LensPipeline, steps: int, grid: tuple[int, int]) -> torch.Tensor:
    from lensgen.flow.schedule import sampling_sigmas

    return sampling_sigmas(steps, grid[0] * grid[1], schedule=pipe.defaults.schedule)


def dpm2_with_grad(velocity, reference, x: torch.Tensor, sigmas: torch.Tensor, grad_below: float):
    """DPM-Solver++(2M) as `lensgen.flow.sampler` integrates it, with gradient through every step at
    sigma <= grad_below; returns the clean tokens and the mean squared velocity gap to the reference."""
    x0_prev, h_prev, gaps = None, None, []
    for i in range(len(sigmas) - 1):
        s, s2 = float(sigmas[i]), float(sigmas[i + 1])
        t = torch.full((x.shape[0],), s)
        with torch.set_grad_enabled(s <= grad_below):
            v = velocity(x, t)
            if v.requires_grad and reference is not None:
                with torch.no_grad():
                    r = reference(x, t)
                gaps.append(((v - r) ** 2).mean())
            x0 = x - s * v
            if s2 == 0.0:
                x = x0
                break
            h = _log_snr(s2) - _log_snr(s)
            if x0_prev is None or not math.isfinite(h_prev) or not math.isfinite(h):
                d = x0
            else:
                r_ = h_prev / h
                d = (1 + 1 / (2 * r_)) * x0 - (1 / (2 * r_)) * x0_prev
            x = (s2 / s) * x + (1 - s2) * -math.expm1(-h) * d
            x0_prev, h_prev = x0, h
    gap = torch.stack(gaps).mean() if gaps else torch.zeros(())
    return x, gap


def _log_snr(sigma: float) -> float:
    return -math.inf if sigma >= 1.0 else math.log1p(-sigma) - math.log(sigma)


def save(pipe: LensPipeline, policy, ema: EMA | None, out: Path, classifier_from: str | None) -> None:
    """The pipeline with the trained (or EMA) weights in fp32, and the classifier of `classifier_from`."""
    trained = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    if ema is not None:
        policy.load_state_dict({**trained, **ema.state_dict()})
    pipe.save_pretrained(out, storage="fp32")
    policy.load_state_dict(trained)
    if classifier_from:
        source = model_dir(classifier_from)
        shutil.copytree(source / "classifier", out / "classifier", dirs_exist_ok=True)
        index = json.loads((out / "model_index.json").read_text())
        shipped = json.loads((source / "model_index.json").read_text())
        index["classifier"] = shipped["classifier"]
        for key in ("classifier_scale", "classifier_max_sigma"):
            if key in shipped["lensgen"]:
                index["lensgen"][key] = shipped["lensgen"][key]
        atomic_write_json(out / "model_index.json", index)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the starting model's folder (fp32 weights) or a shipped name")
    ap.add_argument("--prompts", default="runs/rl-prompts.jsonl", help="RL prompt file (training keys only)")
    ap.add_argument("--only-single", action="store_true", help="train on single-object prompts only")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--cap", type=float, default=0.5, help="the scaled margin above which a shape is not pushed")
    ap.add_argument("--kl", type=float, default=0.1, help="weight of the velocity pull toward the starting model")
    ap.add_argument("--grad-below", type=float, default=1.0, help="gradient only through steps at sigma <= this")
    ap.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved weights (0: the trained ones)")
    ap.add_argument("--classifier-from", default=None, help="copy this model's classifier/ (for guided eval)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--save-every", type=int, default=0, help="also save the model to OUT/step-N every N steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    pipe = LensPipeline.from_pretrained(args.model)
    policy = pipe.transformer.requires_grad_(True)
    reference = copy.deepcopy(policy).requires_grad_(False) if args.kl > 0 else None
    ema = EMA(policy, args.ema) if args.ema > 0 else None
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    records = [r for r in load_rl_prompts(args.prompts)
               if not any(it.kind == "text" for it in r.rubric.items) and r.rubric.expected]
    if args.only_single:
        records = [r for r in records if sum(r.rubric.expected.values()) == 1]
    print(f"{len(records)} prompts", flush=True)
    scale = nearest_distance()
    grid = (pipe.default_height // pipe.codec.spatial_factor, pipe.default_width // pipe.codec.spatial_factor)
    sigmas = sigmas_for(pipe, args.sample_steps, grid)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log, window, started = [], [], time.time()
    for step in range(1, args.steps + 1):
        batch = rng.sample(records, args.batch)
        text = pipe.text_encoder.encode([r.prompt for r in batch])
        features, mask = text.features, text.mask

        def velocity(x, t, model=policy, features=features, mask=mask):
            return model(x, features, t, grid, mask).float()

        noise = torch.randn(args.batch, grid[0] * grid[1], pipe.codec.token_channels)
        tokens, gap = dpm2_with_grad(velocity, (lambda x, t: velocity(x, t, reference)) if reference else None,
                                     noise, sigmas, args.grad_below)
        latents = pipe.codec.vae_latents(tokens.transpose(1, 2).unflatten(2, grid))
        images = pipe.codec.vae.decode(latents).sample.float().clamp(-1, 1)
        rewards, read = [], []
        for image, record in zip(images, batch, strict=True):
            m, ok = margin_reward(image_objects(image), record.rubric.expected, scale, args.cap)
            if m is not None:
                rewards.append(m)
            read += ok
        reward = torch.stack(rewards).mean() if rewards else torch.zeros(())
        loss = -reward + args.kl * gap
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0))
            opt.step()
            if ema is not None:
                ema.update(policy, step)
        else:
            norm = 0.0
        window.append((float(reward), sum(read) / max(1, len(read)), float(gap), norm))
        if step % args.log_every == 0 or step == args.steps:
            r, ok, g, n = (sum(v) / len(window) for v in zip(*window))
            row = {"step": step, "reward": r, "read_right": ok, "velocity_gap": g, "grad_norm": n,
                   "seconds": time.time() - started}
            log.append(row)
            print(json.dumps(row), flush=True)
            window = []
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            save(pipe, policy, ema, out / f"step-{step}", args.classifier_from)
    save(pipe, policy, ema, out, args.classifier_from)
    atomic_write_json(out / "reward_backprop.json", {"args": vars(args), "log": log})
    print(f"saved {out}", flush=True)


if __name__ == "__main__":
    main()
