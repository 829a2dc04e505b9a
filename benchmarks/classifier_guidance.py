"""ShapesEval of a model sampled with a latent classifier's guidance (`lensgen train-classifier`).

What the guided KL pull of `lensgen rl` (optim.kl_classifier) would distil, measured directly: each held-out
prompt's rubric (`rubrics_for`; `--rubrics task`: its ShapesEval spec's, GenEval's exact counts only where the
task asks them; `--rubrics text`: read from the prompt's words alone, as a sampler would) guides the model's own
sampler, v' = v - scale * sigma / (1 - sigma) * grad log p(rubric | x_sigma) at levels up to --max-sigma.
Each scale's results go to OUT-<scale>/results.json for `lensgen eval compare`; scale 0 is the model as it
samples (the same images as `lensgen eval shapes` at its defaults).

    python benchmarks/classifier_guidance.py shapes-tiny runs/classifier-shapes --scales 0 30 --out runs/eval-guided
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lensgen.data.rl_prompts.records import rubric_dict
from lensgen.eval.shapes import evaluate, format_table
from lensgen.flow.sampler import sample
from lensgen.flow.schedule import sampling_sigmas
from lensgen.images import to_pil
from lensgen.inference.pipeline import LensPipeline
from lensgen.io import atomic_write_json
from lensgen.rl.latent_classifier import LatentClassifier, guidance
from lensgen.shapes.evalset import load_prompts
from lensgen.shapes.prompt import parse_prompt
from lensgen.shapes.rubrics import rubrics_for

RUBRIC_SOURCES = ("task", "text", "text-exact")


def eval_rubrics(source: str = "task") -> dict[str, dict]:
    """Each held-out prompt's rubric for the guidance. "task": its ShapesEval spec's, exact counts only on the
    counting task (GenEval's rule); "text": read from the prompt's words alone (`parse_prompt`, counts at
    least), what a sampler that knows only the prompt could ask; "text-exact": the same, every count exact."""
    if source not in RUBRIC_SOURCES:
        raise SystemExit(f"--rubrics: expected one of {', '.join(RUBRIC_SOURCES)}, got {source!r}")
    rubrics = {}
    for spec in load_prompts():
        asked = spec if source == "task" else parse_prompt(spec.prompt)
        rubric = rubric_dict(rubrics_for(asked))
        rubric["exact"] = asked.exact_count or source == "text-exact"
        rubrics[spec.prompt] = rubric
    return rubrics


def guided_generator(pipe: LensPipeline, classifier: LatentClassifier, scale: float, max_sigma: float, size: int,
                     rubrics: dict[str, dict] | None = None):
    """generate(prompts, seeds) for `evaluate`: the pipeline's CFG-free sampler with the classifier's guidance
    toward `rubrics` (prompt -> rubric; default: `eval_rubrics("task")`)."""
    if pipe.defaults.cfg != 1:
        raise SystemExit(f"{pipe.name} samples with CFG {pipe.defaults.cfg}; this benchmark guides CFG-free models")
    rubrics = eval_rubrics() if rubrics is None else rubrics
    f = pipe.codec.spatial_factor
    grid = (size // f, size // f)
    sigmas = sampling_sigmas(pipe.defaults.steps, grid[0] * grid[1], schedule=pipe.defaults.schedule)

    def generate(prompts: list[str], seeds: list[int]):
        text = pipe.encode_prompts(list(prompts), "", False)
        asked = [rubrics[p] for p in prompts]

        def velocity(x, sigma):
            v = pipe.transformer(x, text.features, sigma, grid, text.mask).float()
            return v + guidance(classifier, x, sigma, grid, asked, scale, max_sigma)

        tokens = sample(velocity, pipe.initial_noise(list(seeds), size, size), sigmas, solver=pipe.defaults.solver)
        with torch.no_grad():
            return to_pil(pipe.codec.decode(tokens.transpose(1, 2).unflatten(2, grid)).float().clamp(-1, 1))

    return torch.no_grad()(generate)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a CFG-free shipped model name or pipeline folder")
    parser.add_argument("classifier", help="a `lensgen train-classifier` folder")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 30.0])
    parser.add_argument("--max-sigma", type=float, default=0.8, help="guide only up to this noise level")
    parser.add_argument("--n-per-prompt", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="prompts per task (quick runs)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rubrics", choices=RUBRIC_SOURCES, default="task",
                        help="task: each prompt's ShapesEval rubric, exact counts only on the counting task "
                             "(default); text: read from the prompt's words alone, counts at least; "
                             "text-exact: the same, every count exact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write OUT-<scale>/results.json for `lensgen eval compare`")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = LensPipeline.from_pretrained(args.model, device="cpu")
    classifier = LatentClassifier.from_pretrained(args.classifier)
    rubrics = eval_rubrics(args.rubrics)
    overall = {}
    for scale in args.scales:
        result = evaluate(guided_generator(pipe, classifier, scale, args.max_sigma, args.size, rubrics),
                          n_per_prompt=args.n_per_prompt, limit=args.limit, progress=False)
        title = (f"ShapesEval, {pipe.name}, classifier guidance {scale:g} up to sigma {args.max_sigma:g}, "
                 f"{args.rubrics} rubrics")
        print(format_table(result, title))
        overall[scale] = result.overall
        if args.out:
            out = Path(f"{args.out}-{scale:g}")
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "results.json", json.loads(json.dumps(result.to_dict())))
    return overall


if __name__ == "__main__":
    main()
