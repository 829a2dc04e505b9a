"""Inference commands: `lensgen generate` (the demo lives in lensgen.demo).

Everything the user typed is checked against the model folder's model_index.json before the weights load
(seconds for Shapes, minutes for Lens), and images are made and written batch by batch, so memory stays
bounded however many are asked for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lensgen.errors import UserError

if TYPE_CHECKING:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from lensgen.inference.pipeline import LensPipeline

PROMPT_FIELDS = ("prompt", "seed", "negative_prompt")  # what a JSONL prompts line may hold
MAX_SEED = 2**63 - 1


def load_pipeline(model: str | None, device: str | None = None) -> LensPipeline:
    """The pipeline at `model`, or the shipped Shapes model."""
    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline

    return LensPipeline.from_pretrained(model or DEFAULT_MODEL_DIR, device=device)


def png_metadata(*, prompt: str, seed: int, height: int, width: int, model: str, negative_prompt: str = "",
                 steps: int | None = None, cfg: float | None = None, **extra: object) -> PngInfo:
    """The PNG text every image lensgen writes carries (generate, demo, eval), enough to make it again:
    prompt, negative_prompt, seed, steps, cfg, size (WxH) and model, then any `extra` fields (a score).
    steps and cfg are left out only for images no sampler made (eval's ground truth)."""
    from PIL.PngImagePlugin import PngInfo

    fields: dict[str, object] = {"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed,
                                 "steps": steps, "cfg": cfg, "size": f"{width}x{height}", "model": model, **extra}
    info = PngInfo()
    for key, value in fields.items():
        if value is not None:
            info.add_text(key, str(value))
    return info


def save_png(path: str | Path, image: Image.Image, info: PngInfo) -> None:
    """Write atomically: an interrupted run leaves whole images only."""
    from lensgen.io import atomic_open

    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG", pnginfo=info)


# ---- prompts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLine:
    """One prompt of a prompts file; seed and negative_prompt None mean the command line's."""

    prompt: str
    line: int
    seed: int | None = None
    negative_prompt: str | None = None


def _json_prompt(raw: str, where: str, line: int) -> PromptLine:
    """One JSONL line: {"prompt": str, "seed": int (optional), "negative_prompt": str (optional)}."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}:{line}: not valid JSON ({err.msg}); a .jsonl prompts file holds one "
                        f'object per line, e.g. {{"prompt": "a red circle", "seed": 3}}') from None
    if not isinstance(record, dict):
        raise UserError(f'{where}:{line}: expected a JSON object such as {{"prompt": "a red circle"}}, '
                        f"got {type(record).__name__}")
    if unknown := sorted(set(record) - set(PROMPT_FIELDS)):
        raise UserError(f"{where}:{line}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(PROMPT_FIELDS)}")
    prompt, seed, negative = record.get("prompt"), record.get("seed"), record.get("negative_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f'{where}:{line}: "prompt" must be a non-empty string, got {prompt!r}')
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise UserError(f'{where}:{line}: "seed" must be a whole number in 0..{MAX_SEED}, got {seed!r}')
    if negative is not None and not isinstance(negative, str):
        raise UserError(f'{where}:{line}: "negative_prompt" must be a string, got {negative!r}')
    return PromptLine(prompt, line, seed, negative)


def read_prompts_file(path: str | Path) -> list[PromptLine]:
    """Prompts from a file: one per line, or JSONL (a .jsonl name, or a first line that starts with '{')
    with a "prompt" field and optional "seed" and "negative_prompt". Blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompts file {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise UserError(f"prompts file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read prompts file {path}: {err.strerror or err}") from None
    lines = [(n, raw.strip()) for n, raw in enumerate(text.splitlines(), 1) if raw.strip()]
    if not lines:
        raise UserError(f"prompts file {path} has no prompts (blank lines are skipped)")
    jsonl = path.suffix.lower() == ".jsonl" or lines[0][1].startswith("{")
    return [_json_prompt(raw, str(path), n) if jsonl else PromptLine(raw, n) for n, raw in lines]


@dataclass(frozen=True)
class Job:
    """One image to make: index i names the file (NAME-i.png)."""

    index: int
    prompt: str
    negative_prompt: str
    seed: int


def iter_jobs(prompts: list[PromptLine], num: int, seed: int, negative_prompt: str) -> Iterator[Job]:
    """`num` images per prompt, numbered in order. Image i uses seed + i, unless its prompt line has its own
    seed s: then its images use s, s + 1, ..."""
    index = 0
    for entry in prompts:
        for k in range(num):
            own = entry.seed + k if entry.seed is not None else seed + index
            negative = negative_prompt if entry.negative_prompt is None else entry.negative_prompt
            yield Job(index, entry.prompt, negative, own)
            index += 1


def batched(jobs: Iterator[Job], size: int) -> Iterator[list[Job]]:
    batch: list[Job] = []
    for job in jobs:
        batch.append(job)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def output_path(out: Path, index: int, total: int) -> Path:
    """`out` itself for a single image; else NAME-0000.png, NAME-0001.png, ... (wide enough to sort)."""
    if total == 1:
        return out
    digits = max(4, len(str(total - 1)))
    return out.with_name(f"{out.stem}-{index:0{digits}d}{out.suffix}")


# ---- the command ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A generate call after every check that needs no weights."""

    prompts: list[PromptLine]
    height: int
    width: int
    steps: int
    cfg: float
    total: int
    image: Image.Image | None = None  # image-to-image's starting image (--image)
    strength: float | None = None  # and its starting noise level (--strength, or the pipeline's default)
    classifier_scale: float | None = None  # classifier guidance (None: the model has no classifier)


def read_start_image(path: str | Path) -> Image.Image:
    """--image: an image file PIL can read, as RGB (errors name the file)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"--image {path} does not exist") from None
    except UnidentifiedImageError:
        raise UserError(f"--image {path} is not an image file PIL can read (PNG, JPEG, WebP, ...)") from None
    except OSError as err:
        raise UserError(f"cannot read --image {path}: {err}") from None


def _prompts(args: argparse.Namespace) -> list[PromptLine]:
    if (args.prompt is None) == (args.prompts is None):
        raise UserError("give either a PROMPT or --prompts FILE" + (", not both" if args.prompt is not None
                                                                     else ", e.g. lensgen generate \"a red circle\""))
    return read_prompts_file(args.prompts) if args.prompts else [PromptLine(args.prompt, 0)]


def check_request(args: argparse.Namespace) -> Request:
    """Check every argument against the model folder's model_index.json, before the slow weight load."""
    from lensgen.inference.pipeline import (
        DEFAULT_MODEL_DIR,
        DEFAULT_STRENGTH,
        check_device,
        check_strength,
        classifier_scale_for,
        read_defaults,
    )
    from lensgen.io import check_writable
    from lensgen.sizes import parse_size

    prompts = _prompts(args)
    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise UserError(f"output {out} must end in .png (prompt and settings are stored as PNG text)")
    total = len(prompts) * args.num
    check_writable(output_path(out, 0, total))
    check_device(args.device)
    defaults = read_defaults(args.model or DEFAULT_MODEL_DIR)
    height, width = defaults.resolve_size(*(parse_size(args.size) if args.size else (None, None)))
    steps, cfg = defaults.sampling(args.steps, args.cfg, "--steps", "--cfg")
    classifier_scale = classifier_scale_for(args.model or DEFAULT_MODEL_DIR, defaults, args.classifier_scale)
    image, strength = None, args.strength
    if args.image is None and strength is not None:
        raise UserError("--strength is image-to-image's starting noise level: give --image FILE with it")
    if args.image is not None:
        strength = DEFAULT_STRENGTH if strength is None else strength
        check_strength(strength, "--strength")
        image = read_start_image(args.image)
        if not args.size:  # the picture's own size, as image-to-image pipelines do
            try:
                height, width = defaults.resolve_size(image.height, image.width)
            except UserError as err:
                raise UserError(f"--image {args.image} is {image.width}x{image.height}, which this model cannot "
                                f"sample ({err}); give --size WxH to resize it") from None
    return Request(prompts, height, width, steps, cfg, total, image, strength, classifier_scale)


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    req = check_request(args)
    pipe = load_pipeline(args.model, args.device)
    out, model = Path(args.output), args.model or pipe.name
    jobs = iter_jobs(req.prompts, args.num, args.seed, args.negative_prompt)
    extra = {"image": args.image, "strength": req.strength} if req.image is not None else {}
    if req.classifier_scale is not None:
        extra["classifier_scale"] = req.classifier_scale
    with tqdm(total=req.total, desc="generate", unit="img", disable=args.quiet, file=sys.stderr) as bar:
        for batch in batched(jobs, args.batch_size):
            images = pipe([j.prompt for j in batch], height=req.height, width=req.width, steps=req.steps,
                          cfg=req.cfg, seed=[j.seed for j in batch],
                          negative_prompt=[j.negative_prompt for j in batch], progress=False,
                          image=req.image, strength=req.strength, classifier_scale=req.classifier_scale)
            for job, image in zip(batch, images):
                path = output_path(out, job.index, req.total)
                save_png(path, image, png_metadata(prompt=job.prompt, negative_prompt=job.negative_prompt,
                                                   seed=job.seed, steps=req.steps, cfg=req.cfg, height=req.height,
                                                   width=req.width, model=model, **extra))
                bar.write(str(path), file=sys.stdout)
            bar.update(len(batch))
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    top = groups[""]
    p = top.add_parser(
        "generate", help="generate images from a prompt (or a file of prompts)",
        description="Generate images from a text prompt, or from a file of prompts, with a lensgen model folder "
                    "(default: the shipped Shapes model). Images are made --batch-size at a time and each is "
                    "written as soon as its batch is done. Prompt and settings are stored in each PNG's text "
                    "metadata. Every argument is checked before the model loads.",
    )
    p.add_argument("prompt", nargs="?", help="the text prompt (or give --prompts FILE)")
    p.add_argument("--prompts", metavar="FILE",
                   help="prompts file instead of PROMPT: one prompt per line, or JSONL (.jsonl, or lines "
                        'starting with "{") with "prompt" and optional "seed" and "negative_prompt"; blank '
                        "lines skipped; --num images per prompt")
    p.add_argument("--model", help="model folder (LensPipeline.save_pretrained layout); default: shipped model")
    p.add_argument("--size", help="WIDTHxHEIGHT, multiples of the model's token size, ratio 1:2..2:1 "
                                  "(default: the model's, e.g. 64x64 for Shapes, 1024x1024 for Lens)")
    p.add_argument("--steps", type=int, help="sampling steps, at least 1 (default: the model's, 20 for Lens)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale, a finite number >= 0 (default: "
                                             "the model's: 5.0 for Lens, 1 for the shipped shapes-tiny and its "
                                             "Turbo, 3.0 for shapes-tiny-base; 1 = no guidance pass)")
    p.add_argument("--classifier-scale", type=float, default=None,
                   help="classifier guidance toward what a Shapes prompt asks, for models with a classifier/ "
                        "(the shipped shapes-tiny and shapes-tiny-turbo): a finite number >= 0, 0 = off (default: "
                        "the model's: 20 and 3)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed: image i uses seed + i (a prompts-file line with its own \"seed\" s uses "
                        "s, s + 1, ... for its --num images)")
    p.add_argument("--negative-prompt", default="", help="negative prompt (default: empty)")
    p.add_argument("--image", metavar="FILE",
                   help="image-to-image: start from this picture instead of pure noise, at its own size (or "
                        "resized to --size)")
    p.add_argument("--strength", type=float, default=None,
                   help="with --image: the noise level to start from, in (0, 1]; lower keeps more of the "
                        "picture and runs fewer steps, 1 ignores it (default: LensPipeline's, 0.6)")
    p.add_argument("--num", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="images sampled together (default 8): bounds memory; larger is faster on a GPU")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda or cuda:1 (default: cpu)")
    p.add_argument("-o", "--output", default="out.png",
                   help="output PNG (default out.png); with several images NAME-0000.png, NAME-0001.png, ... "
                        "in order")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)
