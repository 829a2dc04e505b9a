"""`lensgen data shapes` (write the dataset) and `lensgen eval shapes` (ShapesEval)."""

from __future__ import annotations

import argparse

from lensgen.errors import UserError

EVAL_HELP = """Score a model (or the judge's own ceiling and floor) on ShapesEval's held-out prompts.
Exactly one source: --model DIR (a LensPipeline folder), --ground-truth (each prompt's own scene,
rendered: the ceiling) or --noise (uniform noise images: the floor)."""


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

    e = groups["eval"].add_parser("shapes", help="ShapesEval: GenEval-style scores on the Shapes world",
                                  description=EVAL_HELP)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="a LensPipeline folder (save_pretrained layout)")
    src.add_argument("--ground-truth", action="store_true", help="render each prompt's scene (ceiling)")
    src.add_argument("--noise", action="store_true", help="pure noise images (floor)")
    e.add_argument("--codec", metavar="DIR", default=None,
                   help="with --ground-truth: pass each image through this latent codec folder (encode, decode), "
                        "the ceiling of a model in that latent space (e.g. a `lensgen train-vae` output)")
    e.add_argument("--tasks", default=None, help="comma-separated tasks (default: all seven)")
    e.add_argument("--n-per-prompt", type=int, default=4, help="images per prompt (default 4, as GenEval)")
    e.add_argument("--size", default=None, help="WxH (default: the model's default size; 64x64 otherwise)")
    e.add_argument("--steps", type=int, default=None, help="sampling steps (model only; default: the model's)")
    e.add_argument("--cfg", type=float, default=None, help="CFG scale (model only; default: the model's)")
    e.add_argument("--limit", type=int, default=None, help="prompts per task (quick runs)")
    e.add_argument("--batch-size", type=int, default=16, help="images per generate call (default 16)")
    e.add_argument("--seed", type=int, default=0, help="first seed; image k of a prompt uses seed + k")
    e.add_argument("--out", default=None, help="directory for results.json and results.md")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval_shapes)


def _data_shapes(args) -> int:
    from lensgen.data.shapes.scene import SceneConfig
    from lensgen.data.shapes.writer import ShapesDataConfig, write_dataset

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


def _eval_shapes(args) -> int:
    import json
    from pathlib import Path

    from lensgen.data.shapes.evalset import load_prompts
    from lensgen.eval import shapes as se
    from lensgen.io import atomic_write_json, atomic_write_text
    from lensgen.sizes import parse_size, validate_size

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    if args.n_per_prompt <= 0 or args.batch_size <= 0 or (args.limit is not None and args.limit <= 0):
        raise UserError("--n-per-prompt, --batch-size and --limit must be positive")
    specs = load_prompts(tasks, limit=args.limit)
    size = parse_size(args.size) if args.size else None
    steps, cfg = args.steps, args.cfg
    if args.codec and not args.ground_truth:
        raise UserError("--codec goes with --ground-truth (a model folder brings its own codec)")
    if args.model:
        from lensgen.pipeline import LensPipeline

        pipe = LensPipeline.from_pretrained(args.model)
        h, w = size or (pipe.default_height, pipe.default_width)
        steps, cfg = pipe.defaults.sampling(steps, cfg)  # what it samples with, so the results say it
        generate, source = se.pipeline_generator(pipe, h, w, steps, cfg), f"model {args.model}"
        source += f", {steps} steps, CFG {cfg:g}"
    else:
        h, w = validate_size(*(size or (64, 64)), multiple=8)
        if args.ground_truth:
            generate, source = se.ground_truth_generator(specs, h, w), "ground truth (ceiling)"
            if args.codec:
                from lensgen.models.vae import load_codec

                codec = load_codec(args.codec)
                h, w = validate_size(h, w, multiple=codec.spatial_factor)
                generate = se.codec_round_trip(generate, codec)
                source = f"ground truth through the codec {args.codec} (ceiling in its latent space)"
        else:
            generate, source = se.noise_generator(h, w), "noise (floor)"
    result = se.evaluate(generate, n_per_prompt=args.n_per_prompt, batch_size=args.batch_size, seed=args.seed,
                         prompts=specs, progress=not args.no_progress)
    result.extra = {"source": source, "height": h, "width": w, "steps": steps, "cfg": cfg}
    table = se.format_table(result, f"ShapesEval, {source}, {w}x{h}, {args.n_per_prompt} per prompt")
    print(table)
    if args.out:
        out = Path(args.out)
        atomic_write_json(out / "results.json", json.loads(json.dumps(result.to_dict())))
        atomic_write_text(out / "results.md", table)
        print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0
