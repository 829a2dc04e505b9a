"""`lensgen data caption`."""

from __future__ import annotations

import argparse
import json

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
    p.add_argument("--config", help="YAML config (see configs/caption-example.yaml)")
    p.add_argument("--base-url", help="override base_url, e.g. http://localhost:8000/v1")
    p.add_argument("--model", help="override model")
    p.add_argument("--concurrency", type=int, help="override concurrency (requests in flight)")
    p.add_argument("--retry-failed", action="store_true", help="redo the shards that had failed samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_caption)


def cmd_caption(args: argparse.Namespace) -> int:
    from lensgen.data.caption.config import load_caption_config
    from lensgen.data.caption.runner import run_captioning

    overrides = {k: v for k, v in {"base_url": args.base_url, "model": args.model,
                                   "concurrency": args.concurrency}.items() if v is not None}
    if args.no_progress:
        overrides["progress"] = False
    config = load_caption_config(args.config, overrides)
    summary = run_captioning(args.input, args.out, config, retry_failed=args.retry_failed)
    print(json.dumps(summary, indent=2))
    return 0
