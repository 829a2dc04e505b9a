"""The rewards of the RL stage (DiffusionNFT): an image and its prompt in, a score per image out.

Every reward is a callable `reward(images, prompts, rubrics) -> RewardResult` (the `Reward` protocol):
- "rubric": the Shapes judge grades each rubric item (partial credit) and the global rule;
  the total is `shapes.rubrics.score`'s (global x mean x (0.25 + 0.75 x worst));
- "rubric_items": the same items' weighted mean alone (no global rule, no worst-item gate), a curriculum
  reward for what the model cannot draw yet;
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

import hashlib
import io
import json
import logging
import math
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from lensgen.config import Validated, load_config
from lensgen.data.caption.client import (
    AuthError,
    ChatClient,
    RejectedError,
    TransientError,
    backoff_seconds,
    image_data_url,
    redact,
)
from lensgen.data.caption.config import Endpoint, resolve_endpoint
from lensgen.errors import UserError
from lensgen.eval.shapes import score_image
from lensgen.shapes.judge import Detection, detect
from lensgen.shapes.prompt import PromptSpec, parse_prompt
from lensgen.shapes.rubrics import SHAPE_CREDITS, Rubrics, rubrics_for, score

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


class _Detections:
    """The judge's reading of each image, made once per image however many Shapes rewards score it. OCR, the
    costly part, runs only when some reward needs the text, and reads only the signs the judge found: text
    without a sign does not earn a sign item (ShapesEval's judge, more lenient, reads the whole image then).
    Keyed by the image object while it lives (PIL images are unhashable: by id, dropped with the image)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[weakref.ref, Detection]] = {}

    def _forget(self, key: int) -> None:
        with self._lock:
            self._seen.pop(key, None)

    def __call__(self, image: Image.Image, ocr: bool) -> Detection:
        key = id(image)
        with self._lock:
            ref, known = self._seen.get(key, (None, None))
        if known is not None and ref() is image and (known.text is not None or not ocr):
            return known
        det = detect(image, ocr=ocr, read_unsigned=False)
        with self._lock:
            if key not in self._seen:
                weakref.finalize(image, self._forget, key)
            self._seen[key] = (weakref.ref(image), det)
        return det


_DETECTIONS = _Detections()


class ShapesRubricReward:
    """Graded rubric items plus the global rule, read by the Shapes judge: a dense, smooth reward.

    items_only: the weighted mean of the item scores alone ("rubric_items"), without the global rule's
    factor and the worst item's gate. Where the model cannot yet draw what is asked (a star it has never
    drawn), the strict total is ~0.01 whatever it draws and the global rule's spread drowns the shape
    credit's; the item mean keeps the shape credit as the signal (a curriculum reward).

    shape_credit: how a shape item credits a blob the judge does not recognise as the asked shape
    (`shapes.rubrics.shape_credit`): "fixed" (one margin for every pair of shapes) or "pair" (each pair's
    template distance, so discs on a hexagon prompt are told apart)."""

    name = "rubric"

    def __init__(self, workers: int = 1, items_only: bool = False, shape_credit: str = "fixed"):
        if shape_credit not in SHAPE_CREDITS:
            raise UserError(f"reward.shape_credit: '{shape_credit}'; expected one of {', '.join(SHAPE_CREDITS)}")
        self.workers = workers
        self.items_only = items_only
        self.shape_credit = shape_credit
        if items_only:
            self.name = "rubric_items"

    def __call__(self, images: list[Image.Image], prompts: list[str],
                 rubrics: list[dict | None]) -> RewardResult:
        _check_batch(images, prompts, rubrics)
        parsed = [shapes_rubrics(p, r) for p, r in zip(prompts, rubrics)]  # every error before any judging
        outcomes = _map(self._score_one, list(zip(images, parsed)), self.workers)
        return _result([t for t, _ in outcomes], [d for _, d in outcomes])

    def _score_one(self, image: Image.Image, rubric: Rubrics) -> tuple[float, dict]:
        needs_text = any(it.kind == "text" for it in rubric.items)
        result = score(image, rubric, detection=_DETECTIONS(image, needs_text), shape_margin=self.shape_credit)
        items = [{"dimension": it.dimension, "description": it.description, "score": s}
                 for it, s in result.items]
        misses = [f"{it.description}: {s:.2f}" for it, s in result.items if s < 1.0]
        if result.global_score < 1.0:
            misses.append(f"global rule: {result.global_score:.2f}")
        total = result.total
        if self.items_only:
            weights = [it.weight for it, _ in result.items]
            total = sum(w * s for w, (_, s) in zip(weights, result.items)) / sum(weights) if weights else 1.0
        return total, _detail(items, result.global_score, "; ".join(misses))


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
        outcomes = _map(self._score_one, list(zip(specs, images)), self.workers)
        return _result([s for s, _ in outcomes], [_detail([], None, reason) for _, reason in outcomes])

    @staticmethod
    def _score_one(spec: PromptSpec, image: Image.Image) -> tuple[float, str]:
        reads_text = bool(spec.text and not spec.objects)
        return score_image(spec, image, detection=_DETECTIONS(image, reads_text))


# ---------------------------------------------------------------- the VLM judge


@dataclass
class JudgeConfig(Validated):
    """The VLM judge's endpoint and limits; base URL and model fall back to LENSGEN_RL_JUDGE_BASE_URL and
    LENSGEN_RL_JUDGE_MODEL (Lens uses GPT-4.1-mini), the key is read from the variable `api_key_env`."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    azure_api_version: str | None = None
    concurrency: int = 16  # requests in flight
    timeout_s: float = 60.0
    max_retries: int = 4  # per image, on 429 / 5xx / 408 / timeouts / malformed or wrong-schema replies
    backoff_base_s: float = 1.0  # exponential backoff with jitter; a server's Retry-After wins
    backoff_max_s: float = 30.0
    image_max_side: int = 512  # images are downscaled to this and sent as JPEG data URLs
    image_quality: int = 90
    temperature: float = 0.0
    max_tokens: int = 300
    cache_size: int = 1024  # verdicts kept per (image, prompt and rubric, model); 0: no cache

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.concurrency >= 1, "concurrency", ">= 1"),
            (self.timeout_s > 0, "timeout_s", "a positive number of seconds"),
            (self.max_retries >= 0, "max_retries", ">= 0"),
            (0 <= self.backoff_base_s <= self.backoff_max_s, "backoff_base_s",
             "0 <= backoff_base_s <= backoff_max_s"),
            (self.image_max_side >= 16, "image_max_side", ">= 16"),
            (1 <= self.image_quality <= 100, "image_quality", "1 to 100"),
            (self.temperature >= 0, "temperature", ">= 0"),
            (self.max_tokens >= 16, "max_tokens", ">= 16"),
            (self.cache_size >= 0, "cache_size", ">= 0"),
        ]


def to_judge_config(config: JudgeConfig | Mapping[str, Any] | None) -> JudgeConfig:
    """A JudgeConfig from itself, a mapping of its fields (a section of the RL config), or the defaults."""
    if isinstance(config, JudgeConfig):
        return config
    return load_config(JudgeConfig, None, dict(config or {}))


JUDGE_VERSION = "judge-v1"  # part of the cache key: bump it when the prompt or the schema changes
JUDGE_SYSTEM = ("You are a strict, careful judge of AI-generated images. You check an image against numbered "
                "requirements and answer with JSON only, no other text.")


def judge_prompt(prompt: str, items: list[dict]) -> str:
    """The user turn: the generation prompt, the numbered rubric items, the global rule, the reply schema."""
    lines = [f'The image was generated for the prompt: "{prompt}"', "",
             "Score how well the image meets each requirement, from 0 (not met at all) to 1 (fully met); "
             "use values in between for partial success.", "", "Requirements:"]
    lines += [f"{i}. ({it['dimension']}) {it['description']}" for i, it in enumerate(items, 1)]
    if not items:
        lines.append("(none)")
    lines += ["", f"Global rule: the image is {GLOBAL_RULE} (no malformed, broken or fused objects, "
              "no stray fragments).", ""]
    entries = ", ".join(f'{{"id": {i}, "score": s{i}}}' for i in range(1, len(items) + 1))
    lines.append("Reply with JSON only, exactly in this form, one entry per requirement "
                 f"(ids 1 to {len(items)}), where every s and g is a number from 0 to 1:")
    lines.append(f'{{"items": [{entries}], "global": g}}')
    return "\n".join(lines)


def judge_items(prompt: str, rubric: dict | None) -> list[dict]:
    """(dimension, description) of each rubric item: a stored rubric of either kind, or, when None, the Shapes
    rubric derived from the prompt."""
    if rubric is None:
        items = [{"dimension": it.dimension, "description": it.description}
                 for it in rubrics_for(_parse_shapes_prompt(prompt, "vlm")).items]
        return items
    raw = rubric.get("items") if isinstance(rubric, Mapping) else None
    if not isinstance(raw, list) or not all(_free_form_item(it) for it in raw):
        raise UserError(f"the rubric of prompt '{prompt}' is not usable by the vlm reward: expected "
                        '{"items": [{"dimension": str, "description": str}, ...]} or None')
    return [{"dimension": it["dimension"], "description": it["description"].strip()} for it in raw]


def _free_form_item(item: Any) -> bool:
    return (isinstance(item, Mapping) and isinstance(item.get("dimension"), str)
            and isinstance(item.get("description"), str) and bool(item["description"].strip()))


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _unit_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise TransientError(f"wrong-schema reply: {what} is {str(value)[:20]!r}, "
                             "expected a number in [0, 1]")
    return float(value)


def parse_verdict(text: str, n_items: int) -> tuple[list[float], float]:
    """(item scores in rubric order, global score) from the judge's reply, validated strictly; anything else
    is a TransientError so the request is retried (a sampled reply may be right the next time)."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        reply = json.loads(text)
    except ValueError:
        raise TransientError(f"malformed reply: not JSON ({text[:40]!r})") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("items"), list) or "global" not in reply:
        raise TransientError("wrong-schema reply: expected an object with 'items' (a list) and 'global'")
    entries = reply["items"]
    if len(entries) != n_items:
        raise TransientError(f"wrong-schema reply: {len(entries)} item scores for {n_items} items")
    scores: dict[int, float] = {}
    for entry in entries:
        ident = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(ident, bool) or not isinstance(ident, int) or not 1 <= ident <= n_items \
                or ident in scores:
            raise TransientError(f"wrong-schema reply: item ids must be 1 to {n_items}, each once")
        scores[ident] = _unit_number(entry.get("score"), f"item {ident}'s score")
    return [scores[i] for i in range(1, n_items + 1)], _unit_number(reply["global"], "the global score")


def _image_bytes(image: Image.Image) -> bytes:
    """Uncompressed RGB (PPM): fast to write, lossless, the same bytes for the same pixels (the cache key)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PPM")
    return buf.getvalue()


class _VerdictCache:
    """A small LRU of good verdicts, so re-scoring the same image for the same rubric asks nothing."""

    def __init__(self, size: int):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: str) -> tuple[list[float], float] | None:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        return None

    def put(self, key: str, verdict: tuple[list[float], float]) -> None:
        if self.size <= 0:
            return
        with self.lock:
            self.data[key] = verdict
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


@dataclass
class _Outcome:
    verdict: tuple[list[float], float] | None  # None: no good answer
    reason: str = ""


class VLMJudgeReward:
    """A VLM scores each rubric item and the global rule in [0, 1]; total = global x mean of the items (the
    global score alone when the rubric is empty). The multiplicative global rule keeps a broken image from
    earning item credit. An image without a good answer after the retries is invalid (NaN), never 0."""

    name = "vlm"

    def __init__(self, config: JudgeConfig | Mapping[str, Any] | None = None):
        self.config = to_judge_config(config)
        self.endpoint: Endpoint = resolve_endpoint(self.config, env_prefix="LENSGEN_RL_JUDGE",
                                                   purpose="RL judge")
        self.client = ChatClient(self.endpoint, self.config.timeout_s)
        self.cache = _VerdictCache(self.config.cache_size)
        self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="vlm-judge")
        self.requests = 0  # requests sent so far (all images, all calls): what the trainer may log
        self._count_lock = threading.Lock()

    def __call__(self, images: list[Image.Image], prompts: list[str],
                 rubrics: list[dict | None]) -> RewardResult:
        _check_batch(images, prompts, rubrics)
        items = [judge_items(p, r) for p, r in zip(prompts, rubrics)]  # every rubric error before any request
        stop = threading.Event()
        futures = [self._pool.submit(self._judge, i, image, judge_prompt(p, its), len(its), stop)
                   for i, (image, p, its) in enumerate(zip(images, prompts, items))]
        try:
            outcomes = [f.result() for f in futures]
        except AuthError as err:
            stop.set()
            for f in futures:
                f.cancel()
            raise UserError(f"the RL judge stopped: {err}; check the key in ${self.config.api_key_env} "
                            f"for {redact(self.endpoint.url, self.endpoint.secret)}") from None
        return _result([self._total(o) for o in outcomes],
                       [self._details(o, its) for o, its in zip(outcomes, items)])

    @staticmethod
    def _total(outcome: _Outcome) -> float | None:
        if outcome.verdict is None:
            return None
        item_scores, global_score = outcome.verdict
        return global_score * (float(np.mean(item_scores)) if item_scores else 1.0)

    @staticmethod
    def _details(outcome: _Outcome, items: list[dict]) -> dict:
        if outcome.verdict is None:
            return _detail([], None, outcome.reason)
        item_scores, global_score = outcome.verdict
        scored = [{**it, "score": s} for it, s in zip(items, item_scores)]
        return _detail(scored, global_score, outcome.reason)

    def _judge(self, index: int, image: Image.Image, text: str, n_items: int,
               stop: threading.Event) -> _Outcome:
        """One image: the cache, then the endpoint with retries; AuthError stops every image of the batch."""
        cfg = self.config
        data = _image_bytes(image)
        key = hashlib.sha256(b"\0".join([data, text.encode(), self.endpoint.model.encode(),
                                         JUDGE_VERSION.encode()])).hexdigest()
        hit = self.cache.get(key)
        if hit is not None:
            return _Outcome(hit)
        url = image_data_url(data, cfg.image_max_side, cfg.image_quality)
        sent = failures = 0
        while not stop.is_set():
            sent += 1
            self._count()
            try:
                reply = self.client.complete(text, url, cfg.max_tokens, cfg.temperature, system=JUDGE_SYSTEM)
                if reply.refusal:
                    raise TransientError("the model refused")
                verdict = parse_verdict(reply.text, n_items)
            except TransientError as err:
                failures += 1
                reason = redact(str(err), self.endpoint.secret)
                if failures > cfg.max_retries:
                    log.warning("judge: image %d: %s; gave up after %d requests", index, reason, sent)
                    return _Outcome(None, f"no valid answer after {sent} requests: {reason}")
                delay = backoff_seconds(failures, cfg.backoff_base_s, cfg.backoff_max_s, err.retry_after)
                log.warning("judge: image %d: %s; retry %d/%d in %.2f s", index, reason, failures,
                            cfg.max_retries, delay)
                stop.wait(delay)
                continue
            except RejectedError as err:  # this request will not succeed as it is: the image is unscored
                reason = redact(str(err), self.endpoint.secret)
                log.warning("judge: image %d: rejected (%s)", index, reason)
                return _Outcome(None, f"rejected: {reason}")
            except AuthError:
                stop.set()
                raise
            self.cache.put(key, verdict)
            return _Outcome(verdict, "" if sent == 1 else f"answered after {sent} requests")
        return _Outcome(None, "stopped")

    def _count(self) -> None:
        with self._count_lock:
            self.requests += 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- combining, building, in the background


class WeightedReward:
    """sum_k w_k x reward_k (weights as given, not normalised: weights summing to 1 keep a [0, 1] reward).
    An image is valid only when every component is; its details list every component's items (each with the
    component's name under "reward"), the component's global score as "<name>/global", and its reasons."""

    def __init__(self, components: Mapping[str, tuple[Reward, float]]):
        if not components:
            raise UserError("a weighted reward needs at least one component")
        self.components = dict(components)
        self.name = "+".join(f"{w:g}*{name}" for name, (_, w) in self.components.items())

    def __call__(self, images: list[Image.Image], prompts: list[str],
                 rubrics: list[dict | None]) -> RewardResult:
        _check_batch(images, prompts, rubrics)
        parts = {name: reward(images, prompts, rubrics) for name, (reward, _) in self.components.items()}
        valid = torch.stack([r.valid for r in parts.values()]).all(0)
        total = sum(w * parts[name].scores for name, (_, w) in self.components.items())
        scores = torch.where(valid, total, torch.full_like(total, math.nan)).float()
        return RewardResult(scores, valid, [self._merge(parts, i) for i in range(len(images))])

    @staticmethod
    def _merge(parts: Mapping[str, RewardResult], i: int) -> dict:
        merged: dict = {"items": [], "global": None}
        reasons = []
        for name, result in parts.items():
            detail = result.details[i]
            merged["items"] += [{**it, "reward": name} for it in detail.get("items", [])]
            merged[f"{name}/global"] = detail.get("global")
            if detail.get("reason"):
                reasons.append(f"{name}: {detail['reason']}")
        merged["reason"] = "; ".join(reasons)
        return merged

    def close(self) -> None:
        for reward, _ in self.components.values():
            if hasattr(reward, "close"):
                reward.close()


REWARDS: dict[str, Callable[..., Reward]] = {  # name -> builder(judge config, shape credit)
    "rubric": lambda judge, credit: ShapesRubricReward(shape_credit=credit),
    "rubric_items": lambda judge, credit: ShapesRubricReward(items_only=True, shape_credit=credit),
    "geneval": lambda judge, credit: GenEvalReward(),
    "vlm": lambda judge, credit: VLMJudgeReward(judge),
}


def build_reward(spec: Mapping[str, float], judge_config: JudgeConfig | Mapping[str, Any] | None = None,
                 shape_credit: str = "fixed") -> WeightedReward:
    """The trainer's reward from its config: reward names to weights, e.g. {"rubric": 0.5, "geneval": 0.5};
    `judge_config` (a JudgeConfig or a mapping of its fields) configures the vlm reward, `shape_credit` the
    rubric rewards' partial shape credit (`ShapesRubricReward`)."""
    if not isinstance(spec, Mapping) or not spec:
        raise UserError(f"rewards: expected a mapping of reward names to weights, e.g. {{rubric: 1.0}}; "
                        f"known rewards: {', '.join(sorted(REWARDS))}")
    unknown = sorted(set(spec) - set(REWARDS))
    if unknown:
        raise UserError(f"rewards: unknown reward(s) {', '.join(map(repr, unknown))}; "
                        f"known rewards: {', '.join(sorted(REWARDS))}")
    for name, weight in spec.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) \
                or weight <= 0:
            raise UserError(f"rewards.{name}: weight {weight!r}; expected a positive number")
    return WeightedReward({name: (REWARDS[name](judge_config, shape_credit), float(w))
                           for name, w in spec.items()})


class AsyncRewards:
    """Scores batches in a background thread, so batch k is judged while the trainer samples batch k + 1.
    Results come back as futures, in submission order when `workers` is 1 (the default); closing it closes
    the reward too (the VLM judge's thread pool)."""

    def __init__(self, reward: Reward, workers: int = 1):
        self.reward = reward
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="rewards")

    def submit(self, images: list[Image.Image], prompts: list[str],
               rubrics: list[dict | None]) -> Future[RewardResult]:
        """The lists are copied: the caller may reuse its own at once."""
        return self._pool.submit(self.reward, list(images), list(prompts), list(rubrics))

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        if hasattr(self.reward, "close"):
            self.reward.close()

    def __enter__(self) -> AsyncRewards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- what the trainer logs


def _concat(results: RewardResult | Sequence[RewardResult]) -> RewardResult:
    if isinstance(results, RewardResult):
        return results
    results = list(results)
    if not results:
        return RewardResult(torch.zeros(0), torch.zeros(0, dtype=torch.bool), [])
    return RewardResult(torch.cat([r.scores for r in results]), torch.cat([r.valid for r in results]),
                        [d for r in results for d in r.details])


def _mean_std(values: Sequence[float], prefix: str) -> dict[str, float]:
    if not len(values):
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {f"{prefix}/mean": float(a.mean()), f"{prefix}/std": float(a.std())}


def _dimension_stats(details: list[dict], valid: list[bool]) -> dict[str, float]:
    """Item score mean and std per rubric dimension (per component in a weighted reward: "rubric/spatial"),
    and each global score's, over the valid images."""
    per: dict[str, list[float]] = {}
    for detail, ok in zip(details, valid):
        if not ok:
            continue
        for it in detail.get("items", []):
            if it.get("score") is not None:
                key = f"{it['reward']}/{it['dimension']}" if "reward" in it else it["dimension"]
                per.setdefault(key, []).append(float(it["score"]))
        for key, value in detail.items():
            if (key == "global" or key.endswith("/global")) and value is not None:
                per.setdefault(key, []).append(float(value))
    out: dict[str, float] = {}
    for key in sorted(per):
        out |= _mean_std(per[key], f"dim/{key}")
    return out


def _rubric_dimensions(rubric: dict | None) -> set[str]:
    items = rubric.get("items") if isinstance(rubric, Mapping) else None
    return {it["dimension"] for it in items or [] if isinstance(it, Mapping) and "dimension" in it}


def _group_stats(scores: np.ndarray, valid: np.ndarray, groups: Sequence[Hashable],
                 eps: float) -> dict[str, float]:
    """Over groups (the images of one prompt) with at least two valid images: the share whose scores are all
    alike (they give DiffusionNFT no signal) and the mean within-group std (population std)."""
    by: dict[Hashable, list[float]] = {}
    for s, ok, g in zip(scores, valid, groups):
        if ok:
            by.setdefault(g, []).append(float(s))
    stds = [float(np.std(v)) for v in by.values() if len(v) >= 2]
    if not stds:
        return {"groups": 0.0}
    return {"groups": float(len(stds)), "zero_variance_group_share": float(np.mean([s <= eps for s in stds])),
            "group_std/mean": float(np.mean(stds))}


def reward_stats(results: RewardResult | Sequence[RewardResult], rubrics: Sequence[dict | None] | None = None,
                 groups: Sequence[Hashable] | None = None, eps: float = 1e-6) -> dict[str, float]:
    """A flat dict to log: reward mean/std over valid images, the invalid share, item scores per rubric
    dimension ("dim/<dimension>/mean|std", from the details), the reward of the prompts whose rubric has each
    dimension ("by_dim/<dimension>/mean|std", when `rubrics` is given), and, given group ids (one per image,
    e.g. the prompt index), the share of zero-variance groups and the mean within-group std."""
    result = _concat(results)
    n = len(result.details)
    scores, valid = result.scores.double().numpy(), result.valid.numpy()
    if groups is not None and len(groups) != n:
        raise ValueError(f"reward_stats: {len(groups)} group ids for {n} images")
    if rubrics is not None and len(rubrics) != n:
        raise ValueError(f"reward_stats: {len(rubrics)} rubrics for {n} images")
    out: dict[str, float] = {"count": float(n), "invalid_share": float(1 - valid.mean()) if n else 0.0}
    out |= _mean_std(scores[valid], "reward")
    out |= _dimension_stats(result.details, valid.tolist())
    if rubrics is not None:
        dims = [_rubric_dimensions(r) for r in rubrics]
        for dim in sorted(set().union(*dims)):
            out |= _mean_std([s for s, ok, d in zip(scores, valid, dims) if ok and dim in d], f"by_dim/{dim}")
    if groups is not None:
        out |= _group_stats(scores, valid, groups, eps)
    return out
