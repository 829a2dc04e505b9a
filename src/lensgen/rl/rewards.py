"""The rewards of the RL stage (DiffusionNFT): an image and its prompt in, a score per image out.

Every reward is a callable `reward(images, prompts, rubrics) -> RewardResult` (the `Reward` protocol):
- "rubric": the Shapes judge grades each rubric item (partial credit) and the global rule;
  the total is `shapes.rubrics.score`'s (global x mean x (0.25 + 0.75 x worst));
- "geneval": GenEval's binary rule with the same judge (1 - normalised edit distance for sign-only prompts);
- "vlm": a VLM over any OpenAI-compatible chat endpoint scores each rubric item and the global rule
  in [0, 1]; the total is global x mean of the items.
`WeightedReward` sums named rewards with weights (`build_reward` builds one from a config mapping),
`AsyncRewards` scores one batch in a background thread while the trainer samples the next, and
`reward_stats` is what the trainer logs.

A reward that cannot be computed (the VLM never answered well) is marked invalid and its score is NaN:
a 0 would be a fabricated negative, so the trainer masks invalid samples out of the loss instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from lensgen.errors import UserError
from lensgen.eval.shapes import score_image
from lensgen.shapes.prompt import PromptSpec, parse_prompt
from lensgen.shapes.rubrics import Rubrics, rubrics_for, score

log = logging.getLogger("lensgen.rl")

GLOBAL_RULE = "structurally coherent and physically plausible"


@dataclass
class RewardResult:
    scores: torch.Tensor  # (B,) float32; NaN where valid is False (mask it out, never read it as a score)
    valid: torch.Tensor  # (B,) bool: False where the reward could not be computed
    details: list[dict]  # per image: {"items": [{"dimension", "description", "score"}], "global", "reason"}

    def __len__(self) -> int:
        return len(self.details)


class Reward(Protocol):
    name: str

    def __call__(self, images: list[Image.Image], prompts: list[str],
                 rubrics: list[dict | None]) -> RewardResult: ...


def _check_batch(images: Sequence, prompts: Sequence, rubrics: Sequence) -> None:
    """A batch whose lists disagree in length is a trainer bug: fail before any work."""
    if not (len(images) == len(prompts) == len(rubrics)):
        raise ValueError(f"a reward batch needs as many prompts and rubrics as images: got {len(images)} "
                         f"images, {len(prompts)} prompts, {len(rubrics)} rubrics")


def _result(scores: Sequence[float | None], details: list[dict]) -> RewardResult:
    """None marks a reward that could not be computed: invalid, scored NaN (never 0)."""
    valid = torch.tensor([s is not None for s in scores], dtype=torch.bool)
    values = torch.tensor([math.nan if s is None else float(s) for s in scores], dtype=torch.float32)
    return RewardResult(values, valid, details)


def _detail(items: list[dict], global_score: float | None, reason: str = "") -> dict:
    return {"items": items, "global": global_score, "reason": reason}


def _map(fn: Callable, args: Sequence, workers: int) -> list:
    """fn over args, in order; with workers > 1 on a short-lived thread pool (the judge's OpenCV and
    numpy code releases the GIL for much of its time)."""
    if workers <= 1 or len(args) <= 1:
        return [fn(*a) for a in args]
    with ThreadPoolExecutor(min(workers, len(args)), thread_name_prefix="reward-judge") as pool:
        return list(pool.map(lambda a: fn(*a), args))


# ---------------------------------------------------------------- Shapes rubrics and GenEval


def _parse_shapes_prompt(prompt: str, reward: str) -> PromptSpec:
    try:
        return parse_prompt(prompt)
    except UserError as err:
        raise UserError(f"the {reward} reward needs a prompt in the Shapes grammar (e.g. 'a photo of a red "
                        f"circle left of a blue star'); cannot read prompt '{prompt}': {err}") from None


def shapes_rubrics(prompt: str, rubric: dict | None) -> Rubrics:
    """The Shapes rubric of a prompt: the stored one (`Rubrics.to_dict()`), or derived from the prompt when
    None. A free-form rubric (items without a kind, written by an LLM) cannot be checked by the Shapes
    judge."""
    if rubric is None:
        return rubrics_for(_parse_shapes_prompt(prompt, "rubric"))
    items = rubric.get("items") if isinstance(rubric, Mapping) else None
    if not isinstance(items, list) or not all(isinstance(it, Mapping) and "kind" in it for it in items):
        raise UserError("the rubric reward needs a Shapes rubric (Rubrics.to_dict(): items with kind and "
                        f"params) or None; prompt '{prompt}' has a free-form rubric: score it with the vlm "
                        "reward")
    try:
        return Rubrics.from_dict(dict(rubric))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"the Shapes rubric of prompt '{prompt}' is incomplete ({type(err).__name__}: "
                        f"{err}); expected Rubrics.to_dict() with items, expected and exact") from None


class ShapesRubricReward:
    """Graded rubric items plus the global rule, read by the Shapes judge: a dense, smooth reward."""

    name = "rubric"

    def __init__(self, workers: int = 1):
        self.workers = workers

    def __call__(self, images: list[Image.Image], prompts: list[str],
                 rubrics: list[dict | None]) -> RewardResult:
        _check_batch(images, prompts, rubrics)
        parsed = [shapes_rubrics(p, r) for p, r in zip(prompts, rubrics)]  # every error before any judging
        outcomes = _map(self._score_one, list(zip(images, parsed)), self.workers)
        return _result([t for t, _ in outcomes], [d for _, d in outcomes])

    @staticmethod
    def _score_one(image: Image.Image, rubric: Rubrics) -> tuple[float, dict]:
        result = score(image, rubric)
        items = [{"dimension": it.dimension, "description": it.description, "score": s}
                 for it, s in result.items]
        misses = [f"{it.description}: {s:.2f}" for it, s in result.items if s < 1.0]
        if result.global_score < 1.0:
            misses.append(f"global rule: {result.global_score:.2f}")
        return result.total, _detail(items, result.global_score, "; ".join(misses))


def geneval_spec(prompt: str) -> PromptSpec:
    """The prompt's GenEval check. A prompt asking for a number (two or more of a shape) counts exactly, as
    GenEval's counting task does, or 'five stars' would earn 'three stars' its reward; otherwise 'at least'
    (an RL prompt carries no task, so the count decides)."""
    spec = _parse_shapes_prompt(prompt, "geneval")
    spec.exact_count = any(o.count > 1 for o in spec.objects)
    return spec


class GenEvalReward:
    """GenEval's binary rule with the Shapes judge (1 - NED for sign-only prompts); the rubric is not used."""

    name = "geneval"

    def __init__(self, workers: int = 1):
        self.workers = workers

    def __call__(self, images: list[Image.Image], prompts: list[str],
                 rubrics: list[dict | None]) -> RewardResult:
        _check_batch(images, prompts, rubrics)
        specs = [geneval_spec(p) for p in prompts]
        outcomes = _map(score_image, list(zip(specs, images)), self.workers)
        return _result([s for s, _ in outcomes], [_detail([], None, reason) for _, reason in outcomes])
