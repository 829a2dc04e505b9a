"""Inference commands: `lensgen generate` (the demo lives in lensgen.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def load_pipeline(model: str | None, device: str | None = None):
    """The pipeline at `model`, or the shipped Shapes model."""
    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline

    return LensPipeline.from_pretrained(model or DEFAULT_MODEL_DIR, device=device)


def png_metadata(**fields):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in fields.items():
        info.add_text(key, str(value))
    return info


def cmd_generate(args: argparse.Namespace) -> int:
    from lensgen.errors import UserError
    from lensgen.io import atomic_open
    from lensgen.sizes import parse_size

    pipe = load_pipeline(args.model, args.device)
    height, width = parse_size(args.size) if args.size else (pipe.default_height, pipe.default_width)
    steps, cfg = pipe.defaults.sampling(args.steps, args.cfg)
    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise UserError(f"output {out} must end in .png (prompt and settings are stored as PNG text)")
    images = pipe([args.prompt] * args.num, height=height, width=width, steps=steps, cfg=cfg, seed=args.seed,
                  negative_prompt=args.negative_prompt, progress=not args.quiet)
    for i, image in enumerate(images):
        path = out if args.num == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        meta = png_metadata(prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed + i,
                            steps=steps, cfg=cfg, size=f"{width}x{height}", model=args.model or pipe.name)
        with atomic_open(path, "wb") as f:
            image.save(f, format="PNG", pnginfo=meta)
        print(path)
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    top = groups[""]
    p = top.add_parser(
        "generate", help="generate images from a prompt",
        description="Generate images from a text prompt with a lensgen model folder (default: the shipped "
                    "Shapes model). Settings are stored in the PNG's text metadata.",
    )
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--model", help="model folder (LensPipeline.save_pretrained layout); default: shipped model")
    p.add_argument("--size", help="WIDTHxHEIGHT, multiples of the model's token size, ratio 1:2..2:1 "
                                  "(default: the model's, e.g. 64x64 for Shapes, 1024x1024 for Lens)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's, 20 for Lens)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the model's, 5.0 for "
                                             "Lens, 3.0 for the shipped Shapes model; 1 = no guidance pass)")
    p.add_argument("--seed", type=int, default=0, help="random seed (image i of --num uses seed + i)")
    p.add_argument("--negative-prompt", default="", help="negative prompt (default: empty)")
    p.add_argument("--num", type=int, default=1, help="number of images")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("-o", "--output", default="out.png", help="output PNG (with --num > 1: NAME-i.png)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)
