"""Classifier guidance's scale, picked on training prompts, and ShapesEval at each scale.

Samples through `LensPipeline(classifier_scale=...)`, as `lensgen generate` does: the model folder's own
classifier/, or `--classifier DIR` (a `lensgen train-classifier` folder) attached to a model without one.

--prompts train (default): a fixed sample of the RL prompt set (`lensgen data rl-prompts`; training-side keys
only, so a scale picked here is not tuned on the held-out benchmark), each image scored with the RL reward (the
Shapes rubric) and the GenEval rule, per dimension; with --agreement instead, per asked shape, how often the
classifier, reading each finished image's own latent (σ 0.05), holds that the shape is there where the judge
finds it and where the judge does not (where guidance has satisfied the classifier but not the judge).
--prompts eval: ShapesEval's held-out prompts, each scale's results in OUT-<scale>/results.json for `lensgen
eval compare` (`lensgen eval shapes --classifier-scale S` gives the same for one scale).

    python benchmarks/classifier_guidance.py shapes-tiny --scales 0 15 30 60
    python benchmarks/classifier_guidance.py shapes-tiny --scales 0 20 --agreement --num-prompts 1024 --n-per-prompt 1
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from lensgen.data.rl_prompts.records import load_rl_prompts
from lensgen.eval.shapes import evaluate, format_table, pipeline_generator
from lensgen.images import image_to_tensor
from lensgen.inference.classifier_guidance import check_max_sigma, prompt_rubric
from lensgen.inference.pipeline import LensPipeline
from lensgen.io import atomic_write_json
from lensgen.models.latent_classifier import MAX_COUNT, LatentClassifier
from lensgen.rl.rewards import GenEvalReward, ShapesRubricReward
from lensgen.shapes.judge import detect
from lensgen.shapes.vocab import SHAPES


def load_pipeline(model: str, classifier: str | None) -> LensPipeline:
    """The model, with `classifier` attached (replacing its own) when given; one with no classifier is refused."""
    pipe = LensPipeline.from_pretrained(model, device="cpu")
    if classifier:
        pipe.classifier = LatentClassifier.from_pretrained(classifier)
    if pipe.classifier is None:
        raise SystemExit(f"{model} has no classifier/: give one with --classifier DIR (`lensgen train-classifier`)")
    return pipe


def training_scores(pipe: LensPipeline, records: list, scale: float, n_per_prompt: int,
                    batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Per RL-prompt dimension (and "all"): mean rubric reward and GenEval rule of the images sampled at `scale`."""
    jobs = [(r, seed) for r in records for seed in range(n_per_prompt)]
    rubric, geneval = ShapesRubricReward(), GenEvalReward()
    rows = defaultdict(list)
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i:i + batch_size]
        prompts = [r.prompt for r, _ in batch]
        images = pipe(prompts, seed=[seed for _, seed in batch], classifier_scale=scale)
        rubrics = [r.rubric.to_dict() for r, _ in batch]
        passes = geneval(images, prompts, rubrics).scores
        for (r, _), a, b in zip(batch, rubric(images, prompts, rubrics).scores, passes):
            rows[r.dimension].append((float(a), float(b)))
            rows["all"].append((float(a), float(b)))
    return {dim: {"rubric": sum(a for a, _ in v) / len(v), "geneval": sum(b for _, b in v) / len(v), "images": len(v)}
            for dim, v in rows.items()}


def judge_agreement(pipe: LensPipeline, records: list, scale: float, n_per_prompt: int, batch_size: int = 32,
                    sigma: float = 0.05) -> dict[str, dict[str, int]]:
    """Per shape a prompt asks for (the guidance's rubric, from its words): images where the judge finds the
    asked number ("found") and where it does not ("missed"), and of each how many the classifier, reading the
    image's own latent at `sigma`, gives probability >= 0.5 of holding that number ("... classifier yes")."""
    jobs = [(r.prompt, seed) for r in records for seed in range(n_per_prompt)]
    table = {shape: {"found": 0, "found, classifier yes": 0, "missed": 0, "missed, classifier yes": 0}
             for shape in SHAPES}
    for i in range(0, len(jobs), batch_size):
        prompts, seeds = zip(*jobs[i:i + batch_size])
        images = pipe(list(prompts), seed=list(seeds), classifier_scale=scale)
        latents = pipe.codec.encode(torch.stack([image_to_tensor(im) for im in images]))  # casts, no grad
        with torch.no_grad():
            counts = pipe.classifier(latents, torch.full((len(latents),), sigma)).counts.softmax(-1)
        for k, (prompt, image) in enumerate(zip(prompts, images)):
            rubric, detection = prompt_rubric(prompt), detect(image)
            for shape, n in (rubric["expected"] if rubric else {}).items():
                row, n = SHAPES.index(shape), min(MAX_COUNT, int(n))
                key = "found" if len(detection.of(shape)) >= n else "missed"
                table[shape][key] += 1
                table[shape][f"{key}, classifier yes"] += int(counts[k, row, n:].sum() >= 0.5)
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a shipped model name or pipeline folder")
    parser.add_argument("--classifier", default=None, help="a `lensgen train-classifier` folder to guide with "
                                                           "(default: the model's own classifier/)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 30.0])
    parser.add_argument("--max-sigma", type=float, default=None,
                        help="guide only up to this noise level (default: the model's classifier_max_sigma)")
    parser.add_argument("--prompts", choices=("train", "eval"), default="train")
    parser.add_argument("--prompt-set", default="runs/rl-prompts.jsonl", help="the RL prompt set (--prompts train)")
    parser.add_argument("--num-prompts", type=int, default=240, help="training prompts sampled (--prompts train)")
    parser.add_argument("--n-per-prompt", type=int, default=None, help="images per prompt (default: 2 train, 4 eval)")
    parser.add_argument("--limit", type=int, default=None, help="ShapesEval prompts per task (--prompts eval)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="--prompts eval: write OUT-<scale>/results.json")
    parser.add_argument("--agreement", action="store_true",
                        help="--prompts train: instead of the scores, whether the classifier agrees with the judge "
                             "on each asked shape of the finished images")
    args = parser.parse_args(argv)
    if args.agreement and args.prompts != "train":
        parser.error("--agreement reads training prompts (--prompts train)")
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, args.classifier)
    if args.max_sigma is not None:
        check_max_sigma(args.max_sigma, "--max-sigma")
        pipe.defaults = replace(pipe.defaults, classifier_max_sigma=args.max_sigma)
    max_sigma = pipe.defaults.classifier_max_sigma
    out: dict = {}
    if args.prompts == "train":
        records = load_rl_prompts(args.prompt_set)
        records = random.Random(0).sample(records, min(args.num_prompts, len(records)))
        if args.agreement:
            print(f"| scale | shape | judge finds | classifier agrees | judge misses | classifier says there |  "
                  f"({pipe.name}; {len(records)} training prompts)")
            print("| ---: | --- | ---: | ---: | ---: | ---: |")
            for scale in args.scales:
                out[scale] = table = judge_agreement(pipe, records, scale, args.n_per_prompt or 2)
                total = {column: sum(row[column] for row in table.values()) for column in table[SHAPES[0]]}
                for shape, row in [*table.items(), ("all", total)]:
                    print(f"| {scale:g} | {shape} | {row['found']} | {row['found, classifier yes']} | "
                          f"{row['missed']} | {row['missed, classifier yes']} |", flush=True)
            return out
        print(f"| scale | dimension | rubric reward | GenEval rule | images |  ({pipe.name}; guidance up to "
              f"sigma {max_sigma:g}; {len(records)} training prompts)")
        print("| ---: | --- | ---: | ---: | ---: |")
        for scale in args.scales:
            out[scale] = training_scores(pipe, records, scale, args.n_per_prompt or 2)
            for dim, s in sorted(out[scale].items()):
                print(f"| {scale:g} | {dim} | {s['rubric']:.3f} | {s['geneval']:.3f} | {s['images']} |", flush=True)
        return out
    for scale in args.scales:
        generate = pipeline_generator(pipe, pipe.defaults.height, pipe.defaults.width, None, None, scale)
        result = evaluate(generate, n_per_prompt=args.n_per_prompt or 4, limit=args.limit, progress=False)
        print(format_table(result, f"ShapesEval, {pipe.name}, classifier guidance {scale:g} up to sigma {max_sigma:g}"))
        out[scale] = result.overall
        if args.out:
            folder = Path(f"{args.out}-{scale:g}")
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / "results.json", json.loads(json.dumps(result.to_dict())))
    return out


if __name__ == "__main__":
    main()
