"""`lensgen data rl-prompts`: the RL prompt set, from the Shapes grammar (offline) or an LLM (--llm)."""

from __future__ import annotations

import argparse
import sys

from lensgen.config import add_config_arguments
from lensgen.errors import UserError

HELP = """Write the RL prompt set (Lens-RL-8K's recipe) as JSONL, one record per prompt: id, prompt,
category, dimension (attributes, spatial, quantity, interaction, colour), a rubric of 1-10 items and the
global rule "structurally coherent and physically plausible"; summary.json beside OUT counts them.

Shapes mode (default, offline): N prompts (default 8406) from the Shapes grammar in 7 categories (the six
shapes and the sign), each base prompt expanded along the five dimensions, rubrics from the Shapes
judge's rules. Deterministic: the same --seed and --n give the same file byte for byte. Held-out safe:
no ShapesEval prompt and no held-out colour pair, position or sign word.

LLM mode (--llm --seeds FILE): each seed prompt (one per line) is expanded along the five dimensions by a
chat model behind an OpenAI-compatible endpoint (vLLM, Ollama, OpenAI, Azure), which also writes the
rubrics and picks one of 10 categories. Endpoint and model from the config or
LENSGEN_RL_PROMPTS_BASE_URL / LENSGEN_RL_PROMPTS_MODEL; the key from the variable named by api_key_env
(default OPENAI_API_KEY). Retries with backoff; answers are cached (OUT's folder/<stem>-cache), so a
re-run resumes and asks only for the seeds not answered yet; a seed that keeps failing is reported in
summary.json, never invented. Expansions that touch a ShapesEval key are dropped and reported."""


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["data"].add_parser("rl-prompts", help="the RL prompt set with rubrics (Shapes grammar or an LLM)",
                                  description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT.jsonl", help="output file (summary.json is written beside it)")
    p.add_argument("--n", type=int, help="Shapes mode: number of prompts (default 8406); LLM mode: use the first "
                                         "N seeds (default all). Same as --set n=N")
    p.add_argument("--seed", type=int, help="Shapes mode: the random seed (default 0). Same as --set seed=S")
    p.add_argument("--llm", action="store_true", help="expand seed prompts with an LLM instead of the grammar")
    p.add_argument("--seeds", metavar="FILE", help="LLM mode: seed prompts, one per line (# starts a comment)")
    add_config_arguments(p, "configs/rl-prompts-example.yaml")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rl_prompts)


def _check_arguments(args: argparse.Namespace) -> None:
    if args.llm and not args.seeds:
        raise UserError("--llm needs --seeds FILE (seed prompts, one per line)")
    if args.seeds and not args.llm:
        raise UserError("--seeds is for the LLM mode: add --llm (without it the Shapes grammar is used)")
    if args.llm and args.seed is not None:
        raise UserError("--seed is for the Shapes mode; the LLM mode's output follows the seeds file")
    if args.n is not None and args.n < 1:
        raise UserError(f"--n: expected a positive number, got {args.n}")
    if not args.out.endswith(".jsonl"):
        raise UserError(f"OUT '{args.out}': expected a .jsonl file name")


def cmd_rl_prompts(args: argparse.Namespace) -> int:
    from lensgen.data.rl_prompts.config import load_rl_prompts_config

    _check_arguments(args)
    shortcuts = {"n": args.n, "seed": args.seed, "progress": False if args.no_progress else None}
    config = load_rl_prompts_config(args.config, [*args.set, *((k, v) for k, v in shortcuts.items() if v is not None)])
    if args.llm:
        from lensgen.data.rl_prompts.llm import run_llm_prompts

        s = run_llm_prompts(args.seeds, args.out, config)
        print(f"{s['records']} prompts from {s['answered']} of {s['seeds']} seeds in {len(s['per_category'])} "
              f"categories -> {args.out} ({s['cached']} seeds from the cache, {s['requests']} requests, "
              f"{len(s['failed'])} seeds failed, {len(s['dropped'])} expansions dropped; see summary.json)")
        for f in s["failed"][:5]:
            print(f"lensgen: seed at {args.seeds}:{f['line']} failed: {f['reason']}", file=sys.stderr)
        return 0
    from lensgen.data.rl_prompts.grammar import write_shapes_prompts

    s = write_shapes_prompts(args.out, config)
    print(f"{s['records']} Shapes RL prompts (seed {s['seed']}) in {len(s['per_category'])} categories x "
          f"{len(s['per_dimension'])} dimensions -> {args.out}, 0 held-out violations "
          f"({sum(s['rejected'].values())} candidates rejected)")
    return 0
