"""A small OpenAI-compatible chat-completions client (vLLM, Ollama, OpenAI, Azure): captioning, judging, writing.

One `requests.Session` per thread. Every failure is classified: `TransientError` (HTTP 429 and 5xx,
408, timeouts, connection errors, a reply that is not the expected JSON) is worth retrying after a
backoff; `RejectedError` (other 4xx) is not, for this image; `AuthError` (401 / 403) stops the run.
Errors and logs carry the status and a short reason, never the headers (the key lives there).
"""

from __future__ import annotations

import base64
import io
import logging
import random
import re
import threading
from dataclasses import dataclass

import requests
from PIL import Image

from lensgen.data.caption.config import Endpoint

log = logging.getLogger("lensgen.caption")


class TransientError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class RejectedError(Exception):
    pass


class AuthError(Exception):
    pass


@dataclass
class Reply:
    text: str
    finish_reason: str | None
    refusal: str | None


def image_data_url(data: bytes, max_side: int, quality: int) -> str:
    """The image as a JPEG data URL, downscaled so its longer side is at most `max_side`."""
    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def redact(text: str, secret: str | None) -> str:
    text = re.sub(r"(https?://)[^/@\s]+@", r"\1***@", text)  # credentials in a URL
    return text.replace(secret, "***") if secret else text


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class ChatClient:
    def __init__(self, endpoint: Endpoint, timeout_s: float):
        self.endpoint = endpoint
        self.timeout = (min(10.0, timeout_s), timeout_s)  # (connect, read)
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def complete(self, prompt: str, image_url: str | None, max_tokens: int, temperature: float,
                 system: str | None = None) -> Reply:
        """One chat completion: the user turn holds `prompt` and, when given, the image (a data URL)."""
        content: list[dict] = [{"type": "text", "text": prompt}]
        if image_url is not None:
            content.append({"type": "image_url", "image_url": {"url": image_url}})
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": content})
        body = {"model": self.endpoint.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature}
        try:
            response = self._session().post(self.endpoint.url, json=body, headers=self.endpoint.headers,
                                            timeout=self.timeout)
        except requests.Timeout:
            raise TransientError(f"timeout after {self.timeout[1]:g} s") from None
        except requests.RequestException as err:
            raise TransientError(redact(f"connection error: {type(err).__name__}", self.endpoint.secret)) from None
        status = response.status_code
        if status in (401, 403):
            raise AuthError(f"HTTP {status}: the endpoint refused the credentials")
        if status == 429 or status == 408 or status >= 500:
            raise TransientError(f"HTTP {status}", _retry_after(response))
        if status >= 400:
            raise RejectedError(redact(f"HTTP {status}: {response.text[:200]}", self.endpoint.secret))
        try:
            choice = response.json()["choices"][0]
            message = choice["message"]
            content = message.get("content")
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError("malformed reply (not a chat completion)") from None
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return Reply(content or "", choice.get("finish_reason"), message.get("refusal"))


def backoff_seconds(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter (attempt 1, 2, ...); a server's Retry-After wins, within the cap."""
    if retry_after is not None:
        return min(cap, retry_after)
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
