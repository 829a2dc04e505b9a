"""Two ShapesEval runs side by side: per task, the difference B - A and its paired standard error.

Runs on the same prompts and seeds share most of their noise (the prompt's difficulty, the seed's
starting noise), so the difference is judged on matched images: per prompt, the mean over its common
seeds of B's score minus A's, then the standard error of those differences over prompts. That is far
tighter than comparing the two scores' own standard errors, which is what an ablation needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensgen.errors import UserError
from lensgen.eval.shapes import SampleResult, combined_se, standard_errors
from lensgen.shapes.evalset import TASKS


@dataclass
class TaskDifference:
    task: str
    a: float  # mean score of the matched images
    b: float
    prompts: int
    se: float | None  # paired standard error of b - a over prompts (None with one prompt)

    @property
    def diff(self) -> float:
        return self.b - self.a


@dataclass
class Comparison:
    tasks: list[TaskDifference]
    images: int  # matched (task, prompt, seed) images

    @property
    def overall_a(self) -> float:
        return float(np.mean([t.a for t in self.tasks]))

    @property
    def overall_b(self) -> float:
        return float(np.mean([t.b for t in self.tasks]))

    @property
    def overall_se(self) -> float | None:
        return combined_se([t.se for t in self.tasks])


def load_scores(path: str | Path) -> dict[tuple[str, str, int], float]:
    """(task, prompt id, seed) -> score from a `lensgen eval shapes --out` folder or its results.json."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path}: no ShapesEval results (expected results.json or a folder holding it, "
                        "as `lensgen eval shapes --out DIR` writes)")
    try:
        samples = json.loads(file.read_text())["samples"]
        return {(s["task"], s["id"], int(s["seed"])): float(s["score"]) for s in samples}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"malformed {file}: expected `samples` with task, id, seed and score ({err})") from None


def compare(a: dict[tuple[str, str, int], float], b: dict[tuple[str, str, int], float]) -> Comparison:
    """B against A on the images both scored (same task, prompt and seed). The paired standard errors are
    ShapesEval's own (`standard_errors`) taken over the per-image differences B - A."""
    common = sorted(a.keys() & b.keys())
    if not common:
        raise UserError("the two runs share no (task, prompt, seed): run both on the same prompts and seeds")
    diffs = [SampleResult(k[1], k[0], k[1], k[2], b[k] - a[k]) for k in common]  # (id, task, prompt, seed)
    tasks_se, _ = standard_errors(diffs)
    rows = []
    for task in sorted(tasks_se, key=lambda t: TASKS.index(t) if t in TASKS else len(TASKS)):
        keys = [k for k in common if k[0] == task]
        rows.append(TaskDifference(task, float(np.mean([a[k] for k in keys])), float(np.mean([b[k] for k in keys])),
                                   len({k[1] for k in keys}), tasks_se[task]))
    return Comparison(rows, len(common))


def _signed(value: float, se: float | None, bold: bool = False) -> str:
    text = f"{value:+.3f}" if se is None else f"{value:+.3f} ± {se:.3f}"
    text = f"**{text}**" if bold else text
    return text + (" *" if se and abs(value) > 2 * se else "")


def run_name(path: str | Path) -> str:
    """How a run is called in the table: its folder's name."""
    path = Path(path)
    return (path.parent if path.is_file() else path).resolve().name


def format_comparison(c: Comparison, name_a: str, name_b: str) -> str:
    """A markdown table: each task's two scores and B - A ± paired s.e. (* where |B - A| > 2 s.e.)."""
    lines = [f"### ShapesEval: {name_b} against {name_a} ({c.images} matched images)", "",
             f"| task | prompts | A: {name_a} | B: {name_b} | B - A ± s.e. |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {t.task} | {t.prompts} | {t.a:.3f} | {t.b:.3f} | {_signed(t.diff, t.se)} |" for t in c.tasks]
    lines.append(f"| **overall** | | **{c.overall_a:.3f}** | **{c.overall_b:.3f}** | "
                 f"{_signed(c.overall_b - c.overall_a, c.overall_se, bold=True)} |")
    return "\n".join(lines) + "\n\n* |B - A| above twice its paired standard error\n"


__all__ = ["Comparison", "TaskDifference", "compare", "format_comparison", "load_scores", "run_name"]
