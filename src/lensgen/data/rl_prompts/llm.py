"""The LLM mode: seed prompts expanded along the five dimensions by a chat model, with rubrics, resumable.

For each seed (a text file, one prompt per line) an OpenAI-compatible endpoint is asked for JSON: the
seed's category (one of the config's, 10 by default as in Lens) and, per dimension, a new prompt with
1-10 rubric items (dimension + description). Conventions are the captioner's (data/caption/runner.py):
HTTP 429 / 408 / 5xx, timeouts, connection errors and replies that are not a chat completion are
retried `max_retries` times with exponential backoff and jitter (Retry-After wins); an answer that is a
refusal, malformed JSON, truncated or of the wrong schema is retried `max_bad_answers` times, also after
a backoff; 401/403 stops the run. A seed that keeps failing is reported in summary.json and skipped:
nothing is ever invented for it. Good answers are cached by the seed's text and `prompt_version`, so a
re-run asks only for the seeds not answered yet, and OUT is rebuilt from the cache in seed order.
Every expansion goes through `heldout_violations`: one that shows a ShapesEval key is dropped
(reported), as is a prompt another seed already produced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lensgen.data.caption.cache import CaptionCache
from lensgen.data.caption.checks import REFUSAL
from lensgen.data.caption.client import (
    AuthError,
    ChatClient,
    RejectedError,
    Reply,
    TransientError,
    backoff_seconds,
    redact,
)
from lensgen.data.caption.config import Endpoint, resolve_endpoint
from lensgen.data.rl_prompts.config import ENV_PREFIX, RLPromptsConfig
from lensgen.data.rl_prompts.records import (
    GLOBAL_RULE,
    MAX_DESCRIPTION_CHARS,
    MAX_PROMPT_CHARS,
    RLPrompt,
    vlm_item,
    write_rl_prompts,
)
from lensgen.data.rl_prompts.safety import heldout_violations, normalise_prompt
from lensgen.errors import UserError
from lensgen.io import check_writable
from lensgen.shapes.rubrics import DIMENSIONS, MAX_ITEMS, Rubrics

log = logging.getLogger("lensgen.rl_prompts")

SYSTEM_PROMPT = """You expand text-to-image prompts for reinforcement-learning post-training. Given a seed \
prompt, write five new prompts, each building on the seed along one dimension, and a rubric for each: \
short checks a judge can verify by looking at the generated image.

Dimensions:
- attributes: give the objects attributes: material, texture, size, shape, pattern, style, or text written \
on something (quote the exact words).
- spatial: say where things are relative to each other or in the frame (left of, right of, above, below, in \
front of, behind, inside).
- quantity: give exact numbers of objects (two to six).
- interaction: add a second subject and say how the two interact (holding, riding, chasing, leaning on, \
looking at).
- colour: give the colours of the objects, each colour bound to one object.

Rules: each prompt is one sentence of 8 to 60 words describing a single image that can be drawn, keeps the \
seed's subject, and differs from the other four. Each rubric has 1 to 10 items; each item is one yes/no \
statement about the image ("the cat is black", "there are exactly three apples", "the lamp is left of the \
sofa"), tagged with the dimension it checks: attributes, spatial, quantity, interaction or colour. Cover \
every requirement of the prompt. Do not add an item about overall quality: one global rule (structurally \
coherent and physically plausible) is applied to every image.

Also choose the seed's top-level category, exactly one of: {categories}.

Answer with one JSON object and nothing else (no markdown, no comments), in this form:
{"category": "...", "expansions": {"attributes": {"prompt": "...", "rubric": [{"dimension": "attributes", \
"description": "..."}]}, "spatial": {...}, "quantity": {...}, "interaction": {...}, "colour": {...}}}"""

_ALIASES = {"color": "colour"}  # models often write the American spelling
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL | re.IGNORECASE)
MAX_SEED_CHARS = 2000


class BadAnswer(Exception):
    """An answer that is not a usable expansion: worth asking again, up to max_bad_answers times."""


@dataclass
class Seed:
    line: int  # 1-based line in the seeds file
    text: str


@dataclass
class Outcome:
    status: str  # "ok" or "failed"
    answer: dict | None = None  # the validated answer (parse_answer's form)
    reason: str | None = None
    requests: int = 0
    cached: bool = False


# --- seeds and answers ----------------------------------------------------------------------------------

def read_seeds(path: str | Path, limit: int | None = None) -> list[Seed]:
    """The seed prompts: one per line; blank lines and lines starting with # skipped; repeats (compared
    normalised) read once. Errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"seeds file not found: {path} (expected a text file, one seed prompt per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    seeds, seen = [], set()
    for number, line in enumerate(lines, 1):
        text = " ".join(line.split())
        if not text or text.startswith("#"):
            continue
        if len(text) > MAX_SEED_CHARS:
            raise UserError(f"{path}:{number}: seed prompt of {len(text)} characters; at most {MAX_SEED_CHARS}")
        if normalise_prompt(text) in seen:
            log.info("%s:%d: repeats an earlier seed; read once", path, number)
            continue
        seen.add(normalise_prompt(text))
        seeds.append(Seed(number, text))
        if limit is not None and len(seeds) == limit:
            break
    if not seeds:
        raise UserError(f"{path}: no seed prompts (expected one prompt per line; # starts a comment)")
    return seeds


def _dimension(value: Any, where: str) -> str:
    dim = _ALIASES.get(value, value) if isinstance(value, str) else value
    if dim not in DIMENSIONS:
        raise BadAnswer(f"wrong schema: {where} is {value!r}, expected one of {', '.join(DIMENSIONS)}")
    return dim


def _string(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadAnswer(f"wrong schema: {where} must be a non-empty string of at most {limit} characters")
    return " ".join(value.split())


def _keys(d: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(d, dict):
        raise BadAnswer(f"wrong schema: {where} must be an object")
    if set(d) != allowed:
        raise BadAnswer(f"wrong schema: {where} has keys {sorted(d)}, expected {sorted(allowed)}")
    return d


def _expansion(d: Any, dim: str) -> dict:
    d = _keys(d, {"prompt", "rubric"}, f"expansions.{dim}")
    items = d["rubric"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        raise BadAnswer(f"wrong schema: expansions.{dim}.rubric must list 1 to {MAX_ITEMS} items")
    rubric = []
    for i, item in enumerate(items):
        where = f"expansions.{dim}.rubric[{i}]"
        item = _keys(item, {"dimension", "description"}, where)
        rubric.append({"dimension": _dimension(item["dimension"], f"{where}.dimension"),
                       "description": _string(item["description"], f"{where}.description", MAX_DESCRIPTION_CHARS)})
    return {"prompt": _string(d["prompt"], f"expansions.{dim}.prompt", MAX_PROMPT_CHARS), "rubric": rubric}


def parse_answer(text: str, categories: list[str]) -> dict:
    """The answer as {"category", "expansions": {dimension: {"prompt", "rubric": [items]}}}, checked
    strictly (a ```json fence is allowed); BadAnswer says what is wrong."""
    m = _FENCE.match(text)
    try:
        data = json.loads(m.group(1) if m else text)
    except ValueError as err:
        raise BadAnswer(f"malformed JSON: {err}") from None
    data = _keys(data, {"category", "expansions"}, "the answer")
    by_name = {c.strip().lower(): c for c in categories}
    category = data["category"].strip().lower() if isinstance(data["category"], str) else None
    if category not in by_name:
        raise BadAnswer(f"wrong schema: category {data['category']!r} is not one of {', '.join(categories)}")
    raw = data["expansions"]
    if isinstance(raw, dict):
        raw = {_ALIASES.get(k, k): v for k, v in raw.items()}
    raw = _keys(raw, set(DIMENSIONS), "expansions")
    expansions = {dim: _expansion(raw[dim], dim) for dim in DIMENSIONS}
    if len({normalise_prompt(e["prompt"]) for e in expansions.values()}) < len(DIMENSIONS):
        raise BadAnswer("wrong schema: the five prompts are not all different")
    return {"category": by_name[category], "expansions": expansions}


def answer_problem(reply: Reply, categories: list[str]) -> tuple[dict | None, str | None]:
    """(the parsed answer, None) or (None, why it is unusable)."""
    if reply.refusal:
        return None, "refusal"
    if not reply.text.strip():
        return None, "empty answer"
    try:
        return parse_answer(reply.text, categories), None
    except BadAnswer as err:
        if REFUSAL.search(reply.text[:300]):
            return None, "refusal"
        if reply.finish_reason == "length":
            return None, "truncated at max_tokens"
        return None, str(err)


# --- asking ---------------------------------------------------------------------------------------------

def seed_key(text: str) -> str:
    return hashlib.sha256(normalise_prompt(text).encode()).hexdigest()


class Expander:
    """Expands one seed: cache, then the endpoint, with retries on transient errors and bad answers."""

    def __init__(self, config: RLPromptsConfig, endpoint: Endpoint, cache: CaptionCache):
        self.config, self.endpoint, self.cache = config, endpoint, cache
        self.client = ChatClient(endpoint, config.timeout_s)
        self.system = (config.system_prompt or SYSTEM_PROMPT).replace("{categories}", ", ".join(config.categories))
        self.stopped = threading.Event()

    def _cached(self, key: str) -> dict | None:
        hit = self.cache.get(key, self.config.prompt_version)
        if hit is None:
            return None
        try:  # checked again: the categories may have changed, or the file been edited
            return parse_answer(json.dumps(hit.get("answer")), self.config.categories)
        except BadAnswer:
            return None

    def expand(self, seed: Seed) -> Outcome:
        cfg, key = self.config, seed_key(seed.text)
        hit = self._cached(key)
        if hit is not None:
            return Outcome("ok", hit, cached=True)
        requests_made = transient = bad = 0
        while not self.stopped.is_set():
            requests_made += 1
            try:
                reply = self.client.complete(f"Seed prompt: {seed.text}", None, cfg.max_tokens, cfg.temperature,
                                             system=self.system)
            except TransientError as err:
                transient += 1
                if transient > cfg.max_retries:
                    return Outcome("failed", reason=f"gave up after {requests_made} requests: {err}",
                                   requests=requests_made)
                delay = backoff_seconds(transient, cfg.backoff_base_s, cfg.backoff_max_s, err.retry_after)
                log.warning("seed line %d: %s; retry %d/%d in %.2f s", seed.line,
                            redact(str(err), self.endpoint.secret), transient, cfg.max_retries, delay)
                time.sleep(delay)
                continue
            except RejectedError as err:
                return Outcome("failed", reason=str(err), requests=requests_made)
            except AuthError:
                self.stopped.set()
                raise
            answer, reason = answer_problem(reply, cfg.categories)
            if answer is not None:
                self.cache.put(key, cfg.prompt_version, {"seed": seed.text, "model": self.endpoint.model,
                                                         "answer": answer})
                return Outcome("ok", answer, requests=requests_made)
            bad += 1
            log.warning("seed line %d: unusable answer (%s), try %d of %d", seed.line,
                        redact(reason, self.endpoint.secret), bad, cfg.max_bad_answers + 1)
            if bad > cfg.max_bad_answers:
                return Outcome("failed", reason=reason, requests=requests_made)
            time.sleep(backoff_seconds(bad, cfg.backoff_base_s, cfg.backoff_max_s))
        return Outcome("failed", reason="run stopped", requests=requests_made)


def _ask_all(expander: Expander, seeds: list[Seed]) -> dict[int, Outcome]:
    """Every seed's outcome, by line, with at most `concurrency` requests in flight."""
    cfg = expander.config
    outcomes: dict[int, Outcome] = {}
    with ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="rl-prompts") as pool, \
            tqdm(total=len(seeds), desc="rl-prompts", unit="seed", disable=not cfg.progress) as bar:
        futures = {pool.submit(expander.expand, seed): seed for seed in seeds}
        for future in as_completed(futures):
            try:
                outcomes[futures[future].line] = future.result()
            except AuthError as err:
                for other in futures:
                    other.cancel()
                raise UserError(f"prompt writing stopped: {err}; check {cfg.api_key_env}") from None
            bar.update(1)
    return outcomes


# --- records --------------------------------------------------------------------------------------------

def _slug(category: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-") or "category"


def build_records(seeds: list[Seed], outcomes: dict[int, Outcome]) -> tuple[list[RLPrompt], list[dict]]:
    """Records in seed order (dimensions in DIMENSIONS order), and the expansions dropped with the reason."""
    records, dropped, seen = [], [], set()
    for seed in seeds:
        outcome = outcomes[seed.line]
        if outcome.status != "ok":
            continue
        answer, key = outcome.answer, seed_key(seed.text)[:10]
        for dim in DIMENSIONS:
            expansion = answer["expansions"][dim]
            problems = heldout_violations(expansion["prompt"])
            if not problems and normalise_prompt(expansion["prompt"]) in seen:
                problems = ["duplicate: another seed gave this prompt"]
            if problems:
                dropped.append({"line": seed.line, "seed": seed.text, "dimension": dim, "prompt": expansion["prompt"],
                                "reasons": problems})
                continue
            seen.add(normalise_prompt(expansion["prompt"]))
            items = [vlm_item(it["dimension"], it["description"]) for it in expansion["rubric"]]
            records.append(RLPrompt(f"{_slug(answer['category'])}-{dim}-{key}", expansion["prompt"],
                                    answer["category"], dim, Rubrics(items, {}, False), GLOBAL_RULE, seed.text))
    return records, dropped


def default_cache_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.stem}-cache"


def run_llm_prompts(seeds_path: str | Path, out: str | Path, config: RLPromptsConfig) -> dict[str, Any]:
    """Expand every seed (cache first), write OUT and summary.json; failures and drops are in the summary."""
    endpoint = resolve_endpoint(config, env_prefix=ENV_PREFIX, purpose="prompt-writing")
    seeds = read_seeds(seeds_path, config.n)
    check_writable(out)
    expander = Expander(config, endpoint, CaptionCache(config.cache_dir or default_cache_dir(out)))
    outcomes = _ask_all(expander, seeds)
    records, dropped = build_records(seeds, outcomes)
    failed = [{"line": s.line, "seed": s.text, "reason": outcomes[s.line].reason}
              for s in seeds if outcomes[s.line].status != "ok"]
    if not records:
        raise UserError(f"no prompts written: all {len(seeds)} seeds failed or were dropped "
                        f"(first reason: {failed[0]['reason'] if failed else dropped[0]['reasons'][0]})")
    info = {
        "mode": "llm", "seeds_file": str(seeds_path), "seeds": len(seeds), "n": config.n,
        "answered": len(seeds) - len(failed), "cached": sum(o.cached for o in outcomes.values()),
        "requests": sum(o.requests for o in outcomes.values()), "failed": failed, "dropped": dropped,
        "model": endpoint.model, "endpoint": redact(endpoint.url, endpoint.secret),
        "prompt_version": config.prompt_version,
        "config": {k: v for k, v in asdict(config).items() if k not in ("system_prompt",)},
    }
    return write_rl_prompts(out, records, info)
