"""`lensgen data curate` and `lensgen data stats`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lensgen.config import add_config_arguments

CURATE_HELP = """Clean a set of images with the nine Lens steps, in order: corrupt files, resolution, NSFW,
aesthetics, watermarks, clarity, entropy, brightness, near duplicates. IN is a folder of images
(searched recursively), a .txt list of image paths, or WebDataset / img2dataset shards. OUT receives
the kept images as WebDataset shards (OUT/shards), a Parquet manifest of every input with all its
scores and the verdict (OUT/manifest), and OUT/summary.json + summary.png. Re-running the same command
resumes an interrupted run. Steps whose model weights are not configured are reported as skipped."""


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["data"].add_parser("curate", help="clean images with the 9 Lens filters into shards + manifest",
                                  description=CURATE_HELP)
    p.add_argument("input", metavar="IN", help="folder of images, .txt list of paths, or a folder of .tar shards")
    p.add_argument("out", metavar="OUT", help="output folder (created; an unfinished run there is resumed)")
    add_config_arguments(p, "configs/curate-default.yaml")
    p.add_argument("--executor", choices=["local", "ray"], help="same as --set run.executor=... (default: local)")
    p.add_argument("--workers", type=int, help="same as --set run.workers=... (0: one per core)")
    p.add_argument("--ray-address", help="same as --set run.ray_address=... ('auto' joins a running Ray cluster)")
    p.add_argument("--shard-size", type=int, help="same as --set run.shard_size=... (images per output shard)")
    p.add_argument("--restart", action="store_true", help="discard a previous run in OUT and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_curate)

    s = groups["data"].add_parser("stats", help="print the summary of a curation or captioning output",
                                  description="Counts per step (or caption outcomes), recomputed from the "
                                  "manifest; works on an unfinished run too (it reports its progress).")
    s.add_argument("out", metavar="OUT", help="output folder of `lensgen data curate` or `lensgen data caption`")
    s.add_argument("--json", action="store_true", help="print the full summary as JSON")
    s.set_defaults(func=cmd_stats)


def cmd_curate(args: argparse.Namespace) -> int:
    from lensgen.data.curate.config import load_config
    from lensgen.data.curate.pipeline import run_curation
    from lensgen.data.curate.summary import format_table

    shortcuts = {"run.executor": args.executor, "run.workers": args.workers, "run.ray_address": args.ray_address,
                 "run.shard_size": args.shard_size, "run.progress": False if args.no_progress else None}
    config = load_config(args.config, [*args.set, *((k, v) for k, v in shortcuts.items() if v is not None)])
    summary = run_curation(args.input, args.out, config, restart=args.restart)
    print(format_table(summary))
    out = Path(args.out)
    print(f"shards: {out / 'shards'}  manifest: {out / 'manifest'}  summary: {out / 'summary.json'}, "
          f"{out / 'summary.png'}")
    return 0 if summary["conservation_ok"] else 1


def cmd_stats(args: argparse.Namespace) -> int:
    from lensgen.errors import UserError

    out = Path(args.out)
    if (out / "captions").is_dir():
        from lensgen.data.caption.runner import caption_summary

        summary = caption_summary(out)
        print(json.dumps(summary, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
        return 0
    if not (out / "run.json").is_file():
        raise UserError(f"{out} is not a curation or captioning output (no run.json, no captions/)")
    from lensgen.config import from_mapping
    from lensgen.data.curate.config import CurateConfig
    from lensgen.data.curate.steps import plan_steps
    from lensgen.data.curate.summary import format_table, summarize

    run = json.loads((out / "run.json").read_text())
    config = from_mapping(CurateConfig, run["config"], str(out / "run.json"))
    summary = summarize(out, plan_steps(config, strict=False))
    done = {kind: len(list((out / kind).glob("part-*.parquet"))) for kind in ("stage", "manifest")}
    summary["progress"] = {"units": run["units"], "scored": done["stage"], "written": done["manifest"]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        print(f"units: {run['units']}, scored {done['stage']}, written {done['manifest']}")
    return 0
