"""How far a model's drawn shapes are from being read as the shape asked: the Shapes judge's margins.

The judge names a blob's shape by the best template cosine (lensgen.shapes.shapefit); a hexagon is told
from a circle by under a hundredth of cosine. This prints, per shape, how often a single object is read as
that shape and the median margin (its cosine to the asked shape minus the best other shape's: > 0 is read
right), for the true scenes, the true scenes through the model's VAE (the ceiling of any model in its latent
space), and each model's samples of "a photo of a <colour> <shape>" (CFG-free defaults of its folder).
`--fit STEPS` also fine-tunes each model that long on true single-object scenes of the measured shapes
(pretraining's loss, as self_fit.py fine-tunes) and measures it again: whether seeing the true shapes
is what the model lacks. `--from-sigma LEVELS` also starts each model from the true scenes noised to each
level (image-to-image, the scene's own caption as prompt): the noise level below which the model keeps a shape
it cannot draw from scratch, i.e. whether it loses the shape while laying the picture out or while finishing it;
with `--prompt-shape` the prompt names another shape, so the row says how often the picture wins over the text.

    python benchmarks/shape_margin.py shapes-tiny shapes-tiny-base --shapes hexagon star
    python benchmarks/shape_margin.py shapes-tiny --shapes hexagon star --fit 1000 --lr 3e-4   # ~10 min here
    python benchmarks/shape_margin.py shapes-tiny --shapes hexagon star --from-sigma 0.2 0.4 0.6 0.8
    python benchmarks/shape_margin.py shapes-tiny --fit 500 --lr 1e-4 --fit-images 1536 --fit-sigma-logit -2 0.7 \
        --save runs/low-noise-fit      # only the low-noise end, on all six shapes
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

from lensgen.images import image_to_tensor, to_pil
from lensgen.inference.pipeline import LensPipeline
from lensgen.shapes import captions, generate_scene, render
from lensgen.shapes.judge import detect
from lensgen.shapes.scene import SceneConfig
from lensgen.shapes.vocab import COLOUR_NAMES, SHAPES
from lensgen.train.objective import SigmaSampling

sys.path.insert(0, str(Path(__file__).resolve().parent))
from self_fit import fine_tune  # noqa: E402  (a sibling benchmark)

SINGLE = SceneConfig(min_objects=1, max_objects=1, p_text=0.0)


def margins(images, shape: str) -> dict:
    """The largest object of each image: what it is read as, and its margin for `shape`."""
    read, margin, quality = [], [], []
    for image in images:
        objects = detect(image).objects
        if not objects:
            read.append("nothing")
            continue
        largest = max(objects, key=lambda o: o.area)
        scores = largest.shape_scores
        read.append(largest.shape or "malformed")
        margin.append(scores.get(shape, 0.0) - max(v for k, v in scores.items() if k != shape))
        quality.append(largest.quality)
    return {"images": len(images), "right": sum(r == shape for r in read) / max(1, len(images)),
            "margin_median": statistics.median(margin) if margin else None,
            "quality_mean": statistics.mean(quality) if quality else None, "read_as": dict(Counter(read))}


def true_scenes(shape: str, n: int, size: int, seed: int, split: str = "any") -> list:
    """n single-object scenes of `shape` (seeded), square at `size`."""
    scenes, index = [], 0
    while len(scenes) < n:
        index += 1
        scene = generate_scene((seed, index), aspect=1.0, config=SINGLE, split=split)
        if scene.objects[0].shape == shape:
            scenes.append(((seed, index), scene))
    return scenes


def samples(pipe: LensPipeline, shape: str, n: int, size: int) -> list:
    prompts = [f"a photo of a {COLOUR_NAMES[k % len(COLOUR_NAMES)]} {shape}" for k in range(n)]
    return pipe(prompts, height=size, width=size, seed=list(range(n)))


def fit_true(pipe: LensPipeline, shapes: list[str], images: int, steps: int, lr: float, size: int,
             sigma_logit: tuple[float, float] | None = None) -> LensPipeline:
    """`pipe` fine-tuned on `images` true scenes of `shapes` (training split, short captions); `sigma_logit`:
    (mean, std) of the trained noise levels' logit, unshifted (default: pretraining's levels)."""
    per_shape = -(-images // len(shapes))
    pairs = [(render(scene, size, size), captions(scene, key)["short"])
             for shape in shapes for key, scene in true_scenes(shape, per_shape, size, seed=77, split="train")]
    tuned = copy.copy(pipe)
    sigmas = SigmaSampling(*sigma_logit, shift="none") if sigma_logit else None
    tuned.transformer, _ = fine_tune(pipe, [p[0] for p in pairs], [p[1] for p in pairs], steps, lr, 32, 0.99, 0,
                                     progress=False, sigmas=sigmas)
    tuned.name = f"{pipe.name} + {steps} steps on true scenes"
    return tuned


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="shipped model names or pipeline folders")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--n", type=int, default=48, help="images per shape and source")
    parser.add_argument("--size", type=int, default=64, help="square image side (ShapesEval's: 64)")
    parser.add_argument("--fit", type=int, default=0, metavar="STEPS", help="also fine-tune on true scenes")
    parser.add_argument("--fit-images", type=int, default=1024, help="true scenes to fine-tune on")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate")
    parser.add_argument("--fit-sigma-logit", type=float, nargs=2, default=None, metavar=("MEAN", "STD"),
                        help="fine-tune only where logit(sigma) ~ N(MEAN, STD), unshifted (e.g. -2 0.7: the "
                             "low-noise end, where outlines are finished); default: pretraining's noise levels")
    parser.add_argument("--from-sigma", type=float, nargs="+", default=[], metavar="LEVEL",
                        help="also sample each model from the true scenes noised to these levels (0-1]")
    parser.add_argument("--prompt-shape", default=None, choices=SHAPES,
                        help="with --from-sigma: prompt for this shape instead of the scene's own (the row is "
                             "still scored against the scene's shape: how often the picture wins over the text)")
    parser.add_argument("--save", default=None, help="save the first model's fine-tuned pipeline here "
                                                     "(for lensgen eval shapes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipes = {m: LensPipeline.from_pretrained(m, device="cpu") for m in args.models}
    if args.fit:
        for m in args.models:
            pipes[f"{m} + fit {args.fit}"] = fit_true(pipes[m], args.shapes, args.fit_images, args.fit, args.lr,
                                                      args.size, args.fit_sigma_logit)
        if args.save:
            pipes[f"{args.models[0]} + fit {args.fit}"].save_pretrained(args.save)
    codec = pipes[args.models[0]].codec
    table: dict = {}
    asked = f", asked for a {args.prompt_shape}" if args.prompt_shape else ""
    col = max(42, *(len(n) + 34 for n in pipes))
    print(f"{'shape':8} {'source':{col}} {'read right':>10} {'margin':>8} {'quality':>7}  read as")
    for shape in args.shapes:
        scenes = true_scenes(shape, args.n, args.size, seed=5)
        truth = [render(scene, args.size, args.size) for _, scene in scenes]
        with torch.no_grad():
            through = to_pil(codec.decode(codec.encode(torch.stack([image_to_tensor(im) for im in truth]))))
        rows = {"true scenes": margins(truth, shape), f"true scenes through {args.models[0]}'s VAE": margins(through, shape)}
        rows.update({name: margins(samples(pipe, shape, args.n, args.size), shape) for name, pipe in pipes.items()})
        if args.prompt_shape:  # the same scenes, the prompt naming another shape: what the text alone decides
            prompts = [f"a photo of a {scene.objects[0].colour} {args.prompt_shape}" for _, scene in scenes]
        else:
            prompts = [captions(scene, key)["short"] for key, scene in scenes]
        for name, pipe in pipes.items():
            for level in args.from_sigma:
                edited = pipe(prompts, height=args.size, width=args.size, seed=list(range(args.n)), image=truth,
                              strength=level)
                rows[f"{name} from true scenes at sigma {level:g}{asked}"] = margins(edited, shape)
        for source, r in rows.items():
            margin = f"{r['margin_median']:+.4f}" if r["margin_median"] is not None else "-"
            quality = f"{r['quality_mean']:.3f}" if r["quality_mean"] is not None else "-"
            read_as = ", ".join(f"{k} {v}" for k, v in sorted(r["read_as"].items(), key=lambda kv: -kv[1]))
            print(f"{shape:8} {source:{col}} {r['right']:10.3f} {margin:>8} {quality:>7}  {read_as}")
        table[shape] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return table


if __name__ == "__main__":
    main()
