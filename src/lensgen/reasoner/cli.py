"""`lensgen reason PROMPT`: print the prompt the model would be given, e.g. `lensgen generate "$(lensgen reason
"two red stars")"`."""

from __future__ import annotations

import argparse
import json

from lensgen.reasoner.base import BACKENDS

HELP = """Rewrite a prompt into a dense caption in the style the model was trained on (the Lens Reasoner) and
print it. Backends: shapes (offline, the default: parses a Shapes prompt such as "two red stars left of a
blue circle", plans a scene that satisfies it and writes the Shapes world's dense caption; other prompts pass
through unchanged), llm (any OpenAI-compatible chat endpoint: set LENSGEN_REASONER_BASE_URL and
LENSGEN_REASONER_MODEL, or --set base_url=... --set model=...; the key is read from $OPENAI_API_KEY or the
variable --set api_key_env=NAME names; a failure prints a warning and the prompt as typed) and none."""


def llm_config(args: argparse.Namespace):
    """The LLM backend's config from --config / --set (defaults and the environment otherwise)."""
    from lensgen.config import load_config
    from lensgen.reasoner.llm import ReasonerConfig

    return load_config(ReasonerConfig, args.config, args.set)


def cmd_reason(args: argparse.Namespace) -> int:
    from lensgen.reasoner.factory import make_reasoner
    from lensgen.sizes import parse_size

    height, width = parse_size(args.size)
    reasoner = make_reasoner(args.backend, llm_config(args) if args.backend == "llm" else None)
    result = reasoner.rewrite(args.prompt, aspect=width / height, seed=args.seed)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text)
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    from lensgen.config import add_config_arguments

    p = groups[""].add_parser("reason", help="rewrite a prompt into a dense caption (the Reasoner)", description=HELP)
    p.add_argument("prompt", help="the prompt to rewrite")
    p.add_argument("--backend", choices=BACKENDS, default="shapes", help="shapes (default, offline), llm or none")
    p.add_argument("--size", default="64x64",
                   help="WIDTHxHEIGHT the image will have (default 64x64): the Shapes layout is planned for its "
                        "aspect ratio")
    p.add_argument("--seed", type=int, default=0, help="the Shapes backend's layout and open colours (default 0)")
    p.add_argument("--json", action="store_true",
                   help="print {prompt, text, backend, fallback, reason} as JSON instead of the text alone")
    add_config_arguments(p, "configs/reasoner.yaml (fields of ReasonerConfig: base_url, model, timeout_s, ...)")
    p.set_defaults(func=cmd_reason)
