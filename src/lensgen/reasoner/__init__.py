"""The Reasoner: rewrite a user's short or vague prompt into a dense caption in the training captions' style.

Lens rewrites prompts with a large LLM before sampling (LENS_RECIPE §3) because the model was trained on
dense captions. Backends: `shapes` (offline: parses the Shapes grammar, plans a scene that satisfies it and
writes the dense caption the Shapes model was trained on), `llm` (any OpenAI-compatible chat endpoint) and
`none`. A rewrite never fails a request: on any trouble the user's own prompt is used, with a warning.
"""

from lensgen.reasoner.base import BACKENDS, NoReasoner, Reasoner, Rewrite
from lensgen.reasoner.factory import make_reasoner

__all__ = ["BACKENDS", "NoReasoner", "Reasoner", "Rewrite", "make_reasoner"]
