"""Does the RL reward still mean what ShapesEval means? (The reward-hacking check.)

For each model folder, samples ShapesEval's held-out prompts at the model's defaults and scores every image
twice: with the RL reward (the Shapes rubric, what training maximised) and with ShapesEval's GenEval rule
(what the benchmark counts). Per task it prints both means and the share of images the rubric rewards
well (>= 0.5) that the GenEval rule fails: if RL learnt to please the rubric without drawing what the
prompt asks, that share grows from the pretrained model to the RL one.

    python benchmarks/reward_agreement.py shapes-tiny-base runs/rl-shapes/final
"""

from __future__ import annotations

import argparse

import numpy as np


def agreement(model: str, limit: int, n_per_prompt: int) -> dict[str, tuple[float, float, float, int]]:
    from lensgen.eval.shapes import score_image
    from lensgen.inference.pipeline import LensPipeline
    from lensgen.shapes.evalset import GENEVAL_TASKS, load_prompts
    from lensgen.shapes.rubrics import rubrics_for, score

    pipe = LensPipeline.from_pretrained(model)
    specs = load_prompts(list(GENEVAL_TASKS), limit=limit)
    rows: dict[str, list[tuple[float, float]]] = {}
    for spec in specs:
        images = pipe([spec.prompt] * n_per_prompt, seed=list(range(n_per_prompt)))
        rubric = rubrics_for(spec)
        for image in images:
            rows.setdefault(spec.task, []).append((score(image, rubric).total, score_image(spec, image)[0]))
    out = {}
    for task, pairs in rows.items():
        r, g = np.array(pairs).T
        pleased = r >= 0.5
        out[task] = (float(r.mean()), float(g.mean()), float((pleased & (g == 0)).sum() / max(pleased.sum(), 1)),
                     len(pairs))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="model folders to compare (pretrained first)")
    p.add_argument("--limit", type=int, default=12, help="prompts per task (default 12)")
    p.add_argument("--n-per-prompt", type=int, default=2, help="images per prompt (default 2)")
    args = p.parse_args()
    print("| model | task | rubric reward | GenEval rule | rubric >= 0.5 but GenEval fails | images |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for model in args.models:
        for task, (r, g, hacked, n) in agreement(model, args.limit, args.n_per_prompt).items():
            print(f"| {model} | {task} | {r:.3f} | {g:.3f} | {hacked:.2f} | {n} |")


if __name__ == "__main__":
    main()
