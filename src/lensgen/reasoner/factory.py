"""A reasoner by backend name: what `lensgen reason`, `lensgen serve` and `lensgen eval shapes` build."""

from __future__ import annotations

from lensgen.errors import UserError
from lensgen.reasoner.base import BACKENDS, NoReasoner, Reasoner


def make_reasoner(backend: str, llm_config=None) -> Reasoner:
    """`none`, `shapes` or `llm` (with `llm_config`, a ReasonerConfig; default: from the environment)."""
    if backend == "none":
        return NoReasoner()
    if backend == "shapes":
        from lensgen.reasoner.shapes import ShapesReasoner

        return ShapesReasoner()
    if backend == "llm":
        from lensgen.reasoner.llm import LLMReasoner

        return LLMReasoner(llm_config)
    raise UserError(f"unknown reasoner '{backend}': expected one of {', '.join(BACKENDS)}")
