"""A generation request, checked field by field: every refusal names the field and says what is allowed.

The body is the OpenAI Images API's (`prompt`, `model`, `n`, `size`, `response_format`), so existing
clients work, plus lensgen's own fields (`steps`, `cfg`, `classifier_scale`, `seed`, `negative_prompt`,
`reasoner`). OpenAI fields that do not apply here (`quality`, `style`, `user`, ...) are accepted and ignored;
any other field is refused, so a typo such as `step` is not silently dropped.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from lensgen.errors import UserError
from lensgen.inference.pipeline import PipelineDefaults
from lensgen.serve.config import ServeConfig
from lensgen.sizes import parse_size

MAX_SEED = 2**63 - 1
OPENAI_IGNORED = ("quality", "style", "user", "moderation", "background", "output_compression", "partial_images",
                  "stream")
FIELDS = ("prompt", "model", "n", "size", "response_format", "output_format", "steps", "cfg", "classifier_scale",
          "seed", "negative_prompt", "reasoner")


class BadRequest(Exception):
    """A 4xx answer: `param` is the offending field (None for the body as a whole)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    model: str
    n: int
    height: int
    width: int
    steps: int
    cfg: float
    seed: int
    negative_prompt: str
    reasoner: str
    classifier_scale: float = 0.0  # classifier guidance (models with a classifier/ only)

    @property
    def batch_key(self) -> tuple:
        """Requests with the same key can share one sampler call."""
        return (self.model, self.height, self.width, self.steps, self.cfg, self.classifier_scale)


def _int(body: dict, name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise BadRequest(f"{name} must be a whole number from {lo} to {hi}, got {value!r}", name)
    if not lo <= int(value) <= hi:
        raise BadRequest(f"{name} must be from {lo} to {hi}, got {value!r}", name)
    return int(value)


def _string(body: dict, name: str, default: str | None, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, got {type(value).__name__}", name)
    if len(value) > limit:
        raise BadRequest(f"{name} is {len(value):,} characters long; at most {limit:,} are allowed", name)
    return value


def parse_request(body: Any, models: dict[str, PipelineDefaults], config: ServeConfig,
                  reasoners: tuple[str, ...], guided: Collection[str]) -> GenerationRequest:
    """The checked request, or BadRequest. `models`: the served models' defaults by name, the first the
    default; `reasoners`: the backends this server has; `guided`: the models with a classifier (only they take
    a classifier_scale above 0)."""
    if not isinstance(body, dict):
        raise BadRequest(f'the body must be a JSON object such as {{"prompt": "a red circle"}}, got '
                         f"{type(body).__name__}")
    if unknown := sorted(set(body) - set(FIELDS) - set(OPENAI_IGNORED)):
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}", unknown[0])
    prompt = _string(body, "prompt", None, config.max_prompt_chars)
    if prompt is None or not prompt.strip():
        raise BadRequest("prompt is required: a non-empty string, e.g. \"a red circle\"", "prompt")
    model = _string(body, "model", next(iter(models)), 200)
    if model not in models:
        raise BadRequest(f"model {model!r} is not served here; available: {', '.join(models)}", "model")
    defaults = models[model]
    n = _int(body, "n", 1, 1, config.max_n)
    size = _string(body, "size", "auto", 32)
    try:
        height, width = defaults.resolve_size(*((None, None) if size == "auto" else parse_size(size)))
    except UserError as err:
        raise BadRequest(f"size: {err}", "size") from None
    response_format = body.get("response_format") or "b64_json"
    if response_format != "b64_json":
        raise BadRequest(f"response_format {response_format!r} is not supported: only b64_json (the image "
                         f"inside the response)", "response_format")
    if (body.get("output_format") or "png") != "png":
        raise BadRequest(f"output_format {body['output_format']!r} is not supported: only png", "output_format")
    steps = _int(body, "steps", defaults.steps, 1, config.max_steps)
    cfg = body.get("cfg", defaults.cfg)
    if cfg is None:
        cfg = defaults.cfg
    if isinstance(cfg, bool) or not isinstance(cfg, int | float) or not math.isfinite(cfg) or \
            not 0 <= cfg <= config.max_cfg:
        raise BadRequest(f"cfg must be a number from 0 to {config.max_cfg:g} (1 = no guidance), got {cfg!r}", "cfg")
    classifier_scale = body.get("classifier_scale")
    classifier_scale = defaults.classifier_scale if classifier_scale is None else classifier_scale
    if isinstance(classifier_scale, bool) or not isinstance(classifier_scale, int | float) or \
            not math.isfinite(classifier_scale) or not 0 <= classifier_scale <= config.max_classifier_scale:
        raise BadRequest(f"classifier_scale must be a number from 0 to {config.max_classifier_scale:g} (0 = no "
                         f"classifier guidance), got {classifier_scale!r}", "classifier_scale")
    if classifier_scale > 0 and model not in guided:
        raise BadRequest(f"classifier_scale {classifier_scale:g}: model {model!r} has no classifier to guide with; "
                         f"send 0 or leave it out", "classifier_scale")
    seed = _int(body, "seed", secrets.randbelow(2**31), 0, MAX_SEED - config.max_n)
    negative = _string(body, "negative_prompt", "", config.max_prompt_chars)
    reasoner = _string(body, "reasoner", config.reasoner, 32)
    if reasoner not in reasoners:
        raise BadRequest(f"reasoner {reasoner!r} is not available here; available: {', '.join(reasoners)}",
                         "reasoner")
    return GenerationRequest(prompt, model, n, height, width, steps, float(cfg), seed, negative, reasoner,
                             float(classifier_scale))
