"""Classifier guidance at sampling time: a model folder's `classifier/` steers its sampler toward what the prompt asks.

The latent classifier (`models/latent_classifier.py`, trained by `lensgen train-classifier`) reads from noised
tokens which shapes, colours and relations a Shapes scene holds. Its gradient toward the prompt's rubric, added
to the velocity at noise levels up to `max_sigma`,

    v' = v - scale · σ / (1 - σ) · ∇x log p(rubric | x_σ, σ)

moves the layout toward the asked objects while it is still being decided, for the cost of a small conv net's
gradient per step, not a second transformer pass. The rubric is read from the prompt's words alone
(`shapes.prompt.parse_prompt`; counts exact only where a number of two or more is named, GenEval's rule); a
prompt outside the Shapes grammar, or asking nothing the classifier reads (a sign's text), samples unguided.
"""

from __future__ import annotations

import math
import numbers
import re

import torch

from lensgen.errors import UserError
from lensgen.flow.sampler import VelocityFn
from lensgen.models.latent_classifier import LatentClassifier, guidance
from lensgen.shapes.prompt import parse_prompt
from lensgen.shapes.rubrics import rubrics_for

CLASSIFIER_FOLDER = "classifier"  # the component's sub-folder in a model folder
NOTHING_ASKED: dict = {"items": [], "expected": {}, "exact": False}  # a rubric that adds no guidance
# everyday wordings of the grammar's relations ("a star to the left of a circle" -> "a star left of a circle")
_RELATION_WORDINGS = re.compile(r"\b(?:to|on) the (left|right) of\b", re.IGNORECASE)


def prompt_rubric(prompt: str) -> dict | None:
    """The rubric (`Rubrics.to_dict()` form) a Shapes prompt's words ask ("to the left of" read as the grammar's
    "left of"): counts exact where the prompt names a number of two or more ("three stars"), else at least
    ("a star" does not forbid a second); None for a prompt the Shapes grammar does not read."""
    try:
        spec = parse_prompt(_RELATION_WORDINGS.sub(r"\1 of", prompt))
    except UserError:
        return None
    rubric = rubrics_for(spec).to_dict()
    # GenEval's counting rule, as the RL GenEval reward reads a prompt: a named number of two or more is exact
    rubric["exact"] = spec.exact_count or any(o.count > 1 for o in spec.objects)
    return rubric


def check_classifier_scale(scale: float, name: str = "classifier_scale") -> None:
    """A finite number >= 0 (0 = no classifier guidance)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale < 0:
        raise UserError(f"{name} must be a finite number >= 0 (0 = no classifier guidance), got {scale!r}")


def check_max_sigma(max_sigma: float, name: str = "classifier_max_sigma") -> None:
    """A noise level in (0, 1): guidance above it is off (σ / (1 - σ) grows without bound toward 1)."""
    if isinstance(max_sigma, bool) or not isinstance(max_sigma, numbers.Real) or not 0 < max_sigma < 1:
        raise UserError(f"{name} must be a noise level in (0, 1), got {max_sigma!r}")


def prompt_rubrics(prompts: list[str], fallback_prompts: list[str] | None = None) -> list[dict]:
    """One rubric per prompt for the guidance: its words', else its `fallback_prompts` entry's (e.g. the user's
    words before a Reasoner rewrote them), else one that asks nothing."""
    fallback = fallback_prompts or prompts
    return [prompt_rubric(p) or prompt_rubric(q) or NOTHING_ASKED for p, q in zip(prompts, fallback)]


def guided_velocity_fn(velocity_fn: VelocityFn, classifier: LatentClassifier, grid: tuple[int, int],
                       prompts: list[str], scale: float, max_sigma: float,
                       fallback_prompts: list[str] | None = None) -> VelocityFn:
    """`velocity_fn` plus the classifier's guidance toward each prompt's rubric (one prompt per sample; where a
    prompt is outside the grammar, its `fallback_prompts` entry, e.g. the user's words before a Reasoner
    rewrote them). `velocity_fn` itself when nothing in the batch asks what the classifier reads."""
    rubrics = prompt_rubrics(prompts, fallback_prompts)
    if scale == 0 or all(not r["expected"] for r in rubrics):
        return velocity_fn

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = velocity_fn(x, sigma)
        return v + guidance(classifier, x, sigma, grid, rubrics, scale, max_sigma).to(v.dtype)

    return guided


__all__ = ["CLASSIFIER_FOLDER", "NOTHING_ASKED", "check_classifier_scale", "check_max_sigma", "guided_velocity_fn",
           "prompt_rubric", "prompt_rubrics"]
