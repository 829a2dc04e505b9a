"""`lensgen data caption`."""

from __future__ import annotations

import argparse
import json

from lensgen.config import add_config_arguments

CAPTION_HELP = """Re-caption images densely (~109 words: objects, attributes, spatial relations, actions,
background) with a vision-language model behind an OpenAI-compatible chat-completions endpoint (vLLM,
Ollama, OpenAI, Azure). IN is a folder of WebDataset shards or a `lensgen data curate` output. OUT gets
the shards again with a `dense.txt` member beside the existing short `txt` caption, and a Parquet
record of every sample (captions/). The endpoint and model come from the config or from
LENSGEN_CAPTION_BASE_URL / LENSGEN_CAPTION_MODEL; the key from the variable named by api_key_env
(default OPENAI_API_KEY). Re-running resumes; answers are cached by image hash and prompt version."""


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["data"].add_parser("caption", help="dense captions from a VLM endpoint, into new shards",
                                  description=CAPTION_HELP)
    p.add_argument("input", metavar="IN", help="folder of .tar shards, or a curation output folder")
    p.add_argument("out", metavar="OUT", help="output folder (an unfinished run there is resumed)")
    add_config_arguments(p, "configs/caption-example.yaml")
    p.add_argument("--base-url", help="same as --set base_url=..., e.g. http://localhost:8000/v1")
    p.add_argument("--model", help="same as --set model=...")
    p.add_argument("--concurrency", type=int, help="same as --set concurrency=... (requests in flight)")
    p.add_argument("--retry-failed", action="store_true", help="redo the shards that had failed samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_caption)


def cmd_caption(args: argparse.Namespace) -> int:
    from lensgen.data.caption.config import load_caption_config
    from lensgen.data.caption.runner import run_captioning

    shortcuts = {"base_url": args.base_url, "model": args.model, "concurrency": args.concurrency,
                 "progress": False if args.no_progress else None}
    config = load_caption_config(args.config, [*args.set, *((k, v) for k, v in shortcuts.items() if v is not None)])
    summary = run_captioning(args.input, args.out, config, retry_failed=args.retry_failed)
    print(json.dumps(summary, indent=2))
    return 0
