"""`lensgen data shapes`: the procedural Shapes world written as WebDataset shards."""

from __future__ import annotations

import argparse

from lensgen.errors import UserError


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["data"].add_parser(
        "shapes", help="write procedural Shapes scenes as WebDataset shards",
        description="Write N Shapes scenes (image + dense/short captions + scene spec) as WebDataset tar "
                    "shards at mixed sizes: every size class in --bases at its nine aspect ratios. Resumable: "
                    "shards that exist are skipped. Writes summary.json (sizes, caption word counts).")
    p.add_argument("--n", type=int, required=True, help="number of scenes")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (sample i depends only on seed and i)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--bases", default="64,96,128", help="size classes: square side of each (default 64,96,128)")
    p.add_argument("--multiple", type=int, default=8, help="sides are multiples of this (default 8)")
    p.add_argument("--p-text", type=float, default=0.2, help="fraction of scenes with a sign (default 0.2)")
    p.add_argument("--max-objects", type=int, default=6, help="objects per scene at most (1-6, default 6)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_data_shapes)


def _data_shapes(args) -> int:
    from lensgen.data.shapes_dataset import ShapesDataConfig, write_dataset
    from lensgen.shapes.scene import SceneConfig

    try:
        bases = tuple(int(b) for b in args.bases.split(","))
    except ValueError:
        raise UserError(f"--bases '{args.bases}': expected comma-separated integers, e.g. 64,96,128") from None
    if args.n <= 0 or args.shard_size <= 0:
        raise UserError(f"--n and --shard-size must be positive (got {args.n}, {args.shard_size})")
    if not 1 <= args.max_objects <= 6:
        raise UserError(f"--max-objects must be 1-6, got {args.max_objects}")
    if not 0.0 <= args.p_text <= 1.0:
        raise UserError(f"--p-text must be in [0, 1], got {args.p_text}")
    if any(b < 32 for b in bases) or args.multiple <= 0:
        raise UserError(f"--bases must be >= 32 and --multiple positive (got {bases}, {args.multiple})")
    cfg = ShapesDataConfig(n=args.n, out=args.out, seed=args.seed, shard_size=args.shard_size, bases=bases,
                           multiple=args.multiple,
                           scene=SceneConfig(max_objects=args.max_objects, p_text=args.p_text))
    summary = write_dataset(cfg, progress=not args.no_progress)
    d = summary["dense_words"]
    print(f"{summary['n']} scenes in {summary['shards']} shards under {args.out} "
          f"({summary['shards_written']} written, {summary['shards_skipped']} already there); "
          f"dense captions {d['mean']} words on average ({d['min']}-{d['max']})")
    return 0
