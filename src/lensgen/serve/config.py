"""What a server allows and how it batches: one typed config, checked at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from lensgen.config import Validated


@dataclass
class ServeConfig(Validated):
    host: str = "127.0.0.1"  # loopback by default: expose it on purpose (and with an API key)
    port: int = 8000
    max_batch: int = 8  # images in one sampler call
    max_wait_ms: float = 50.0  # how long the oldest waiting image waits for others to share its call
    queue_size: int = 64  # images waiting or sampling; beyond it requests get 429 + Retry-After
    timeout_s: float = 120.0  # per request, queueing and sampling together; then 504
    max_n: int = 4  # images per request
    max_prompt_chars: int = 2000
    max_steps: int = 100
    max_cfg: float = 20.0
    max_classifier_scale: float = 1000.0
    max_body_bytes: int = 65536
    reasoner: str = "none"  # the default when a request names none: none | shapes | llm
    api_key_env: str | None = None  # the variable holding the key clients must send as Bearer; None: open

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (0 <= self.port <= 65535, "port", "0..65535 (0: any free port)"),
            (self.max_batch >= 1, "max_batch", ">= 1"),
            (self.max_wait_ms >= 0, "max_wait_ms", ">= 0"),
            (self.queue_size >= self.max_n >= 1, "queue_size", ">= max_n >= 1 (one full request must fit)"),
            (self.timeout_s > 0, "timeout_s", "a positive number of seconds"),
            (self.max_prompt_chars >= 1 and self.max_steps >= 1 and self.max_cfg >= 1,
             "max_prompt_chars/max_steps/max_cfg", ">= 1"),
            (self.max_classifier_scale >= 0, "max_classifier_scale", ">= 0"),
            (self.max_body_bytes >= 1024, "max_body_bytes", ">= 1024"),
            (self.reasoner in ("none", "shapes", "llm"), "reasoner", "none, shapes or llm"),
        ]
