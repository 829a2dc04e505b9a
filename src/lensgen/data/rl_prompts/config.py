"""Typed settings of `lensgen data rl-prompts`: the Shapes mode's n and seed, and the LLM mode's endpoint.

The LLM endpoint and model come from the config or the environment (`LENSGEN_RL_PROMPTS_BASE_URL`,
`LENSGEN_RL_PROMPTS_MODEL`, then OPENAI_BASE_URL); the key from the variable named by `api_key_env`
(`lensgen.data.caption.config.resolve_endpoint`). The key is never logged or written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensgen.config import Override, Validated, load_config

ENV_PREFIX = "LENSGEN_RL_PROMPTS"
# Top-level categories an LLM sorts seed prompts into (Lens-RL-8K has 10); change them in the config.
DEFAULT_CATEGORIES = [
    "people", "animals", "food and plants", "objects", "vehicles", "architecture", "landscapes",
    "indoor scenes", "text and signs", "art and abstract",
]


@dataclass
class RLPromptsConfig(Validated):
    n: int | None = None  # Shapes mode: prompts (None: 8406, Lens-RL-8K); LLM mode: the first n seeds (None: all)
    seed: int = 0  # Shapes mode: the same seed and n give the same file, byte for byte
    # LLM mode: the endpoint (see lensgen.data.caption.config.resolve_endpoint)
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    azure_api_version: str | None = None
    concurrency: int = 8  # requests in flight
    timeout_s: float = 120.0
    max_retries: int = 6  # per seed, on 429 / 5xx / timeouts / connection errors / replies not a chat completion
    max_bad_answers: int = 2  # per seed, extra tries after a refusal, malformed JSON or a wrong schema
    backoff_base_s: float = 1.0  # exponential backoff with jitter: base * 2^attempt, capped
    backoff_max_s: float = 60.0
    prompt_version: str = "rl-expand-v1"  # part of the cache key: bump it when the prompt or model changes
    system_prompt: str | None = None  # None: the built-in one (lensgen.data.rl_prompts.llm.SYSTEM_PROMPT)
    categories: list[str] = field(default_factory=lambda: list(DEFAULT_CATEGORIES))
    max_tokens: int = 2000
    temperature: float = 0.7
    cache_dir: str | None = None  # None: OUT's folder / <OUT stem>-cache
    progress: bool = True

    def checks(self) -> list[tuple[bool, str, str]]:
        cats = [c.strip().lower() for c in self.categories]
        return [
            (self.n is None or self.n >= 1, "n", "a positive number (or null for the default)"),
            (self.concurrency >= 1, "concurrency", ">= 1"),
            (self.timeout_s > 0, "timeout_s", "a positive number of seconds"),
            (self.max_retries >= 0 and self.max_bad_answers >= 0, "max_retries/max_bad_answers", ">= 0"),
            (0 <= self.backoff_base_s <= self.backoff_max_s, "backoff_base_s", "0 <= backoff_base_s <= backoff_max_s"),
            (bool(self.prompt_version), "prompt_version", "a non-empty version name"),
            (len(cats) >= 1 and all(cats) and len(set(cats)) == len(cats), "categories",
             "a list of distinct, non-empty category names"),
            (self.max_tokens >= 64, "max_tokens", ">= 64"),
            (0.0 <= self.temperature <= 2.0, "temperature", "0 to 2"),
        ]


def load_rl_prompts_config(path: str | Path | None = None,
                           overrides: Iterable[Override] | Mapping[str, Any] = ()) -> RLPromptsConfig:
    """A `lensgen data rl-prompts` config (defaults when `path` is None) with overrides applied."""
    return load_config(RLPromptsConfig, path, overrides)
