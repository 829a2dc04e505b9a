"""The RL prompt set (Lens-RL-8K's recipe): base prompts expanded along five dimensions, each with rubrics.

Lens post-trains with 8,406 prompts in 10 top-level categories; each base prompt is expanded by an LLM
along attributes, spatial relations, quantity, interaction and colour, and the LLM writes up to 10
rubric items per prompt, plus one global rule for every prompt. Two modes build such a set:

- Shapes (`grammar.generate_shapes_prompts`, the offline default): the Shapes grammar with rubrics from
  `lensgen.shapes.rubrics`, deterministic from a seed, and held-out safe: no prompt is a ShapesEval
  prompt or shows a held-out colour pair, position or word (`safety.heldout_violations`, which the
  generator rejects candidates with and the tests run over the whole set);
- LLM (`llm.run_llm_prompts`): seed prompts expanded by a chat model behind an OpenAI-compatible
  endpoint, with the captioner's retries, cache (resumable) and concurrency.

Both write the same JSONL schema (`records`); `load_rl_prompts` reads and checks it.

`lensgen data rl-prompts` is the command (cli.py). The names below are imported on first use, so
registering the command does not load the Shapes judge.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "GLOBAL_RULE": "records", "RLPrompt": "records", "load_rl_prompts": "records", "write_rl_prompts": "records",
    "heldout_violations": "safety", "generate_shapes_prompts": "grammar", "run_llm_prompts": "llm",
    "RLPromptsConfig": "config", "load_rl_prompts_config": "config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
