"""Where a model loses a sign's word: image-to-image from true sign scenes noised to each level.

ShapesEval's text task asks for a sign reading a word; the judge reads it (OCR) and scores 1 - normalised edit
distance. Rendered true signs read 1.0. This starts each model from those scenes noised to each level σ (the
scene alone, prompted `a sign that says "WORD"`; `LensPipeline(..., image=, strength=)`, each level snapped
to the first of the model's grid at or below it), lets its sampler finish, and prints the mean similarity and
the share read exactly; σ 1 is sampling from pure noise, and the signs through each model's VAE are the
ceiling of any model in its latent space. If the word survives from low noise but not from high, the model
loses it while laying the sign out; if it is lost from low noise too, the model cannot finish letters either.
Words come from the training split (`heldout.TRAIN_WORDS`).

    python benchmarks/sign_from_sigma.py shapes-tiny shapes-tiny-base
"""

from __future__ import annotations

import argparse
import itertools
import random

import numpy as np
import torch

from lensgen.eval.shapes import codec_round_trip
from lensgen.inference.pipeline import LensPipeline
from lensgen.shapes.heldout import TRAIN_WORDS
from lensgen.shapes.judge import detect
from lensgen.shapes.ocr import text_similarity
from lensgen.shapes.render import render
from lensgen.shapes.scene import Background, Scene, make_sign


def true_signs(n: int, size: int, seed: int = 0) -> tuple[list[str], list]:
    """`n` training words (cycled) and each on a plain sign, alone in a square scene of `size` pixels; words too
    long for a legible sign on a square canvas (`make_sign` refuses them) are skipped."""
    rng = np.random.default_rng(seed)
    words, images = [], []
    for word in itertools.cycle(random.Random(seed).sample(TRAIN_WORDS, len(TRAIN_WORDS))):
        if len(words) == n:
            break
        sign = next(filter(None, (make_sign(rng, 1.0, word) for _ in range(20))), None)
        if sign is not None:
            words.append(word)
            images.append(render(Scene([], Background(), sign, 1.0), size, size))
    return words, images


def read(images: list, words: list[str]) -> dict[str, float]:
    sims = [text_similarity(detect(im, ocr=True).text or "", w) for im, w in zip(images, words)]
    return {"similarity": sum(sims) / len(sims), "exact": sum(s == 1.0 for s in sims) / len(sims)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="shipped model names or pipeline folders")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.15, 0.35, 0.57, 0.79, 1.0],
                        help="noise levels to start from (1: pure noise)")
    parser.add_argument("--n", type=int, default=48, help="signs (training words, cycled)")
    parser.add_argument("--size", type=int, default=64, help="square image side (ShapesEval's: 64)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if any(not 0 < level <= 1 for level in args.levels):
        parser.error("--levels must be in (0, 1]")
    torch.set_num_threads(args.threads)
    words, images = true_signs(args.n, args.size)
    prompts = [f'a sign that says "{w}"' for w in words]
    table = {"true signs": read(images, words)}
    for model in args.models:
        pipe = LensPipeline.from_pretrained(model, device="cpu")
        through = codec_round_trip(lambda *_: images, pipe.codec)(prompts, [])  # the latent space's ceiling
        table[f"true signs through {model}'s VAE"] = read(through, words)
        for level in args.levels:
            out = []
            for i in range(0, len(words), args.batch_size):
                batch = slice(i, i + args.batch_size)
                start = {"image": images[batch], "strength": level} if level < 1 else {}
                out += pipe(prompts[batch], seed=list(range(i, i + len(prompts[batch]))), height=args.size,
                            width=args.size, **start)
            table[f"{model} from sigma {level:g}"] = read(out, words)
    print(f"| source | word similarity | read exactly |  ({args.n} signs, {args.size}x{args.size})")
    print("| --- | ---: | ---: |")
    for name, row in table.items():
        print(f"| {name} | {row['similarity']:.3f} | {row['exact']:.3f} |")
    return table


if __name__ == "__main__":
    main()
