"""The LLM reasoner: any OpenAI-compatible chat endpoint rewrites the prompt into one dense caption.

Lens uses a large LLM here (LENS_RECIPE §3); any chat model can stand in. The conventions are the
captioner's, through its client (`data/caption/client.py`): HTTP 429 / 408 / 5xx, timeouts, connection
errors and replies that are not a chat completion are retried with backoff (Retry-After wins); an
answer that is empty, a refusal, truncated, of the wrong length, or that drops a quoted text of the
prompt is asked again `max_bad_answers` times. Unlike a captioning run, a rewrite never fails the
request it serves: when the tries or the time budget run out (or the endpoint refuses the key), the
user's prompt is used as typed, with a warning that says why.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass

from lensgen.config import Validated
from lensgen.data.caption.checks import check_caption, clean_caption
from lensgen.data.caption.client import (
    AuthError,
    ChatClient,
    RejectedError,
    TransientError,
    backoff_seconds,
    redact,
)
from lensgen.data.caption.config import Endpoint, resolve_endpoint
from lensgen.errors import LensgenWarning
from lensgen.reasoner.base import Reasoner, Rewrite

log = logging.getLogger("lensgen.reasoner")
ENV_PREFIX = "LENSGEN_REASONER"  # LENSGEN_REASONER_BASE_URL, LENSGEN_REASONER_MODEL

SYSTEM_PROMPT = """You rewrite prompts for a text-to-image model that was trained on dense image captions. \
Rewrite the user's prompt into one dense caption of about 100 words (60 to 140), in the style of the \
training captions: one plain paragraph that describes the image as if it already existed. Name every \
object with its attributes (colour, size, shape, material), give exact counts, say where each object is \
in the frame and relative to the others, and describe the background and the style. Keep every text in \
quotes exactly as written, inside quotes. Add only details that fit the prompt; never contradict it, never \
drop anything it asks for. Answer with the caption only: no preamble, no list, no markdown."""

_QUOTED = re.compile(r"\"([^\"]+)\"|\u201c([^\u201d]+)\u201d")


def quoted_texts(prompt: str) -> list[str]:
    """The texts the user put in double quotes: they must appear verbatim in the rewrite."""
    return [a or b for a, b in _QUOTED.findall(prompt)]


@dataclass
class ReasonerConfig(Validated):
    """The LLM backend's endpoint and patience. The key is read from the variable `api_key_env`."""

    base_url: str | None = None  # None: $LENSGEN_REASONER_BASE_URL, then $OPENAI_BASE_URL
    model: str | None = None  # None: $LENSGEN_REASONER_MODEL
    api_key_env: str = "OPENAI_API_KEY"
    azure_api_version: str | None = None
    timeout_s: float = 30.0  # per request
    total_timeout_s: float = 60.0  # all tries of one rewrite together; then the prompt is used as typed
    max_retries: int = 3  # on 429 / 5xx / timeouts / connection errors / malformed replies
    max_bad_answers: int = 1  # extra tries after a refusal, a truncated or wrong-length answer, a lost quote
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    min_words: int = 20
    max_words: int = 200
    max_tokens: int = 400
    temperature: float = 0.3
    system_prompt: str | None = None  # None: SYSTEM_PROMPT

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.timeout_s > 0 and self.total_timeout_s > 0, "timeout_s/total_timeout_s", "positive seconds"),
            (self.max_retries >= 0 and self.max_bad_answers >= 0, "max_retries/max_bad_answers", ">= 0"),
            (0 <= self.backoff_base_s <= self.backoff_max_s, "backoff_base_s", "0 <= backoff_base_s <= backoff_max_s"),
            (1 <= self.min_words <= self.max_words, "min_words", "1 <= min_words <= max_words"),
            (self.max_tokens >= 1, "max_tokens", ">= 1"),
        ]


class LLMReasoner(Reasoner):
    name = "llm"

    def __init__(self, config: ReasonerConfig | None = None, endpoint: Endpoint | None = None):
        """`endpoint` defaults to the config's (or the environment's); a missing one is a UserError now,
        at start-up, not a warning on every request."""
        self.config = config or ReasonerConfig()
        self.endpoint = endpoint or resolve_endpoint(self.config, env_prefix=ENV_PREFIX, purpose="reasoner")
        self.client = ChatClient(self.endpoint, self.config.timeout_s)

    def _fallback(self, prompt: str, reason: str) -> Rewrite:
        reason = redact(reason, self.endpoint.secret)
        warnings.warn(f"reasoner: {reason}; using the prompt as typed", LensgenWarning, stacklevel=3)
        return Rewrite(prompt, prompt, self.name, fallback=True, reason=reason)

    def answer_problem(self, prompt: str, text: str, finish_reason: str | None, refusal: str | None) -> str | None:
        """Why an answer cannot be used, or None."""
        cfg = self.config
        problem = check_caption(text, cfg.min_words, cfg.max_words, finish_reason, refusal)
        if problem is None and (lost := [q for q in quoted_texts(prompt) if q not in text]):
            problem = f"the quoted text {lost[0]!r} is not kept verbatim"
        return problem

    def rewrite(self, prompt: str, aspect: float = 1.0, seed: int = 0) -> Rewrite:
        cfg = self.config
        if not prompt.strip():
            return Rewrite(prompt, prompt, self.name)  # the empty prompt is unconditional sampling: keep it
        system = cfg.system_prompt or SYSTEM_PROMPT
        start = time.monotonic()
        transient = bad = 0
        while True:
            try:
                reply = self.client.complete(prompt, None, cfg.max_tokens, cfg.temperature, system=system)
            except TransientError as err:
                transient += 1
                if transient > cfg.max_retries:
                    return self._fallback(prompt, f"gave up after {transient + bad} requests: {err}")
                delay = backoff_seconds(transient, cfg.backoff_base_s, cfg.backoff_max_s, err.retry_after)
                if time.monotonic() - start + delay > cfg.total_timeout_s:
                    return self._fallback(prompt, f"no answer within {cfg.total_timeout_s:g} s: {err}")
                log.info("reasoner: %s; retry %d/%d in %.2f s", redact(str(err), self.endpoint.secret),
                         transient, cfg.max_retries, delay)
                time.sleep(delay)
                continue
            except (RejectedError, AuthError) as err:
                return self._fallback(prompt, str(err))
            text = clean_caption(reply.text)
            problem = self.answer_problem(prompt, text, reply.finish_reason, reply.refusal)
            if problem is None:
                return Rewrite(prompt, text, self.name)
            bad += 1
            if bad > cfg.max_bad_answers:
                return self._fallback(prompt, f"unusable answer: {problem}")
            if time.monotonic() - start > cfg.total_timeout_s:
                return self._fallback(prompt, f"no usable answer within {cfg.total_timeout_s:g} s: {problem}")
            log.info("reasoner: unusable answer (%s), try %d of %d", problem, bad, cfg.max_bad_answers + 1)
