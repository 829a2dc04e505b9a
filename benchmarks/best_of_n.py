"""How far can RL take a model on ShapesEval? The best-of-n ceiling, per task.

RL on a fixed reward sharpens a model's own distribution toward the images it already sometimes draws
well; in a few hundred steps it rarely teaches a skill the model never shows. So the score RL can hope
for on a prompt is bounded, roughly, by the best of the model's n attempts at it. For each task this
prints the model's mean score (what ShapesEval reports), best-of-n (each prompt's best image, averaged
over prompts) and the share of prompts with at least one fully correct image, for n = 1, 4, ..., N.

    lensgen eval shapes --model DIR --n-per-prompt 16 --limit 12 --out runs/ceiling
    python benchmarks/best_of_n.py runs/ceiling/results.json

or let it sample (same seeds as ShapesEval: image k of a prompt uses seed k):

    python benchmarks/best_of_n.py --model shapes-tiny-base --n 16 --limit 12
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def per_prompt_scores(samples: list[dict]) -> dict[str, dict[str, list[float]]]:
    """task -> prompt id -> scores in seed order."""
    table: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        table[s["task"]][s["id"]].append((int(s["seed"]), float(s["score"])))
    return {task: {pid: [v for _, v in sorted(rows)] for pid, rows in prompts.items()}
            for task, prompts in table.items()}


def best_of(scores: dict[str, list[float]], n: int) -> tuple[float, float]:
    """(mean over prompts of the best of the first n scores, share of prompts with a score-1 image among them)."""
    best = [max(v[:n]) for v in scores.values()]
    return float(np.mean(best)), float(np.mean([b >= 1.0 for b in best]))


def sample(model: str, n: int, limit: int | None) -> list[dict]:
    from lensgen.eval.shapes import evaluate, pipeline_generator
    from lensgen.inference.pipeline import LensPipeline

    pipe = LensPipeline.from_pretrained(model)
    result = evaluate(pipeline_generator(pipe, pipe.default_height, pipe.default_width, None, None), n_per_prompt=n, limit=limit)
    return [vars(s) for s in result.samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", help="a results.json of `lensgen eval shapes --n-per-prompt N`")
    parser.add_argument("--model", help="sample this pipeline folder instead of reading results")
    parser.add_argument("--n", type=int, default=16, help="images per prompt when sampling (default 16)")
    parser.add_argument("--limit", type=int, default=12, help="prompts per task when sampling (default 12)")
    args = parser.parse_args()
    if bool(args.results) == bool(args.model):
        parser.error("give exactly one of RESULTS or --model")
    samples = json.load(open(args.results))["samples"] if args.results else sample(args.model, args.n, args.limit)
    table = per_prompt_scores(samples)
    n_max = min(len(v) for prompts in table.values() for v in prompts.values())
    ns = [n for n in (1, 4, 8, 16, 32, 64) if n < n_max] + [n_max]
    print(f"mean score, best-of-n score and share of prompts solved at least once, {n_max} images per prompt")
    print("| task | prompts | mean | " + " | ".join(f"best-of-{n}" for n in ns) + " | solved@" + str(n_max) + " |")
    print("|---|---:|---:|" + "---:|" * len(ns) + "---:|")
    rows = []
    for task, prompts in table.items():
        mean = float(np.mean([np.mean(v[:n_max]) for v in prompts.values()]))
        bests = [best_of(prompts, n)[0] for n in ns]
        solved = best_of(prompts, n_max)[1]
        rows.append((mean, bests, solved))
        print(f"| {task} | {len(prompts)} | {mean:.3f} | " + " | ".join(f"{b:.3f}" for b in bests)
              + f" | {solved:.2f} |")
    mean, bests, solved = (float(np.mean([r[0] for r in rows])), np.mean([r[1] for r in rows], axis=0),
                           float(np.mean([r[2] for r in rows])))
    print("| overall | | " + f"{mean:.3f} | " + " | ".join(f"{b:.3f}" for b in bests) + f" | {solved:.2f} |")


if __name__ == "__main__":
    main()
