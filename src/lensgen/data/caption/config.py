"""Typed configuration of a captioning run, and where the endpoint, model and key come from.

Endpoint and model come from the config or the environment (`LENSGEN_CAPTION_BASE_URL`,
`LENSGEN_CAPTION_MODEL`, falling back to `OPENAI_BASE_URL`); the key is read from the environment
variable named by `api_key_env` (default OPENAI_API_KEY). The key is never logged or written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensgen.config import Override, Validated, load_config
from lensgen.errors import UserError


@dataclass
class CaptionConfig(Validated):
    base_url: str | None = None  # e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama)
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key; local servers need none
    azure_api_version: str | None = None  # Azure OpenAI: sends `api-key` and ?api-version=...
    concurrency: int = 8  # requests in flight
    timeout_s: float = 120.0
    max_retries: int = 6  # per image, on 429 / 5xx / timeouts / connection errors / malformed replies
    max_bad_answers: int = 2  # per image, extra tries after a refusal or a too short / long answer
    backoff_base_s: float = 1.0  # exponential backoff with jitter: base * 2^attempt, capped
    backoff_max_s: float = 60.0
    prompt_version: str = "dense-v1"  # part of the cache key: bump it when the prompt or model changes
    prompt: str | None = None  # None: the built-in dense prompt (lensgen.data.caption.prompt)
    min_words: int = 40
    max_words: int = 250
    max_tokens: int = 400
    temperature: float = 0.2
    image_max_side: int = 1024  # images are downscaled to this and sent as JPEG data URLs
    image_quality: int = 90
    cache_dir: str | None = None  # None: OUT/cache
    progress: bool = True

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.concurrency >= 1, "concurrency", ">= 1"),
            (self.timeout_s > 0, "timeout_s", "a positive number of seconds"),
            (self.max_retries >= 0 and self.max_bad_answers >= 0, "max_retries/max_bad_answers", ">= 0"),
            (0 <= self.backoff_base_s <= self.backoff_max_s, "backoff_base_s", "0 <= backoff_base_s <= backoff_max_s"),
            (1 <= self.min_words <= self.max_words, "min_words", "1 <= min_words <= max_words"),
            (self.image_max_side >= 16, "image_max_side", ">= 16"),
            (bool(self.prompt_version), "prompt_version", "a non-empty version name"),
        ]


@dataclass
class Endpoint:
    url: str  # the chat-completions URL
    model: str
    headers: dict[str, str]  # holds the key: never log this
    secret: str | None  # the key itself, for redaction

    def __repr__(self) -> str:  # keep the key out of tracebacks and debug prints
        return f"Endpoint(url={self.url!r}, model={self.model!r})"


def resolve_endpoint(config, env_prefix: str = "LENSGEN_CAPTION", purpose: str = "captioning") -> Endpoint:
    """The chat-completions endpoint of any config with base_url, model, api_key_env and azure_api_version
    (the captioner's, the RL judge's, the prompt writer's); base URL and model fall back to
    `{env_prefix}_BASE_URL` (then OPENAI_BASE_URL) and `{env_prefix}_MODEL`."""
    base = config.base_url or os.environ.get(f"{env_prefix}_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    model = config.model or os.environ.get(f"{env_prefix}_MODEL")
    if not base:
        raise UserError(f"no {purpose} endpoint: set base_url in the config or {env_prefix}_BASE_URL "
                        "(e.g. http://localhost:8000/v1 for vLLM)")
    if not model:
        raise UserError(f"no {purpose} model: set model in the config or {env_prefix}_MODEL")
    key = os.environ.get(config.api_key_env) or None
    url = base.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if config.azure_api_version:
        url += f"?api-version={config.azure_api_version}"
        if key:
            headers["api-key"] = key
    elif key:
        headers["Authorization"] = f"Bearer {key}"
    return Endpoint(url, model, headers, key)


def load_caption_config(path: str | Path | None = None,
                        overrides: Iterable[Override] | Mapping[str, Any] = ()) -> CaptionConfig:
    """A `lensgen data caption` config (defaults when `path` is None) with overrides applied."""
    return load_config(CaptionConfig, path, overrides)
