"""What every Reasoner backend gives: `rewrite(prompt, aspect, seed) -> Rewrite`, and a batched call.

The batched call `reasoner(prompts, aspect=..., seeds=...) -> list[str]` is the form `LensPipeline` takes as
its `reasoner` option, so the pipeline needs no import of this package (it sits below it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

BACKENDS = ("none", "shapes", "llm")


@dataclass(frozen=True)
class Rewrite:
    """One prompt and what the model is given instead.

    fallback: the backend could not rewrite (unparseable prompt, endpoint failure) and `text` is the
    prompt itself; `reason` says why."""

    prompt: str
    text: str
    backend: str
    fallback: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class Reasoner:
    """Base class: subclasses implement `rewrite`. Rewrites of one call are independent."""

    name = "none"
    seeded = False  # True when the seed changes the rewrite (a planned layout): then each image gets its own

    def rewrite(self, prompt: str, aspect: float = 1.0, seed: int = 0) -> Rewrite:
        raise NotImplementedError

    def __call__(self, prompts: Sequence[str], aspect: float = 1.0, seeds: Sequence[int] | None = None) -> list[str]:
        seeds = list(seeds) if seeds is not None else [0] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        return [self.rewrite(p, aspect, s).text for p, s in zip(prompts, seeds)]


class NoReasoner(Reasoner):
    """The prompt as typed."""

    name = "none"

    def rewrite(self, prompt: str, aspect: float = 1.0, seed: int = 0) -> Rewrite:
        return Rewrite(prompt, prompt, self.name)
