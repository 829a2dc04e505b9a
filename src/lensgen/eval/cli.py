"""`lensgen eval shapes`: ShapesEval on a model folder, or the judge's ceiling and floor; `lensgen eval
compare`: two such runs side by side, with the paired standard error of their difference."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lensgen.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

    from lensgen.eval.shapes import SampleResult, ShapesEvalResult

EVAL_HELP = """Score a model (or the judge's own ceiling and floor) on ShapesEval's held-out prompts.
Exactly one source: --model DIR (a LensPipeline folder), --ground-truth (each prompt's own scene,
rendered: the ceiling) or --noise (uniform noise images: the floor)."""

COMPARE_HELP = """Compare two ShapesEval runs made on the same prompts and seeds (e.g. `lensgen eval shapes --model A
--out eval-a` and the same for B). Per task: both scores on the images both runs scored, and B - A with
its paired standard error over prompts (per prompt, B's mean score minus A's). Matched images share the
prompt's difficulty and the seed's noise, so this tells apart differences that the two scores' own
standard errors cannot; * marks a difference above twice its standard error."""


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
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
    e.add_argument("--classifier-scale", type=float, default=None,
                   help="classifier guidance toward each prompt's words (a model with a classifier/; default: the "
                        "model's; 0 = off)")
    e.add_argument("--reasoner", choices=("none", "shapes", "llm"), default="none",
                   help="with --model: rewrite each prompt first (shapes: the offline Shapes planner; llm: an "
                        "OpenAI-compatible endpoint from LENSGEN_REASONER_BASE_URL / LENSGEN_REASONER_MODEL); "
                        "scoring reads the original prompt (default none)")
    e.add_argument("--limit", type=int, default=None, help="prompts per task (quick runs)")
    e.add_argument("--batch-size", type=int, default=16, help="images per generate call (default 16)")
    e.add_argument("--seed", type=int, default=0, help="first seed; image k of a prompt uses seed + k")
    e.add_argument("--out", default=None, help="directory for results.json and results.md")
    e.add_argument("--save-images", action="store_true",
                   help="with --out: keep every scored image as OUT/images/TASK/ID-SEED.png (PNG text: prompt, "
                        "seed, settings, score, the judge's reason) and list them in OUT/images/index.jsonl")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval_shapes)

    c = groups["eval"].add_parser("compare", help="two ShapesEval runs side by side, with paired standard errors",
                                  description=COMPARE_HELP)
    c.add_argument("a", metavar="A", help="the reference run: an `eval shapes --out` folder or its results.json")
    c.add_argument("b", metavar="B", help="the run compared with it, on the same prompts and seeds")
    c.add_argument("--out", default=None, help="also write the table to this markdown file")
    c.set_defaults(func=_eval_compare)


def _eval_compare(args: argparse.Namespace) -> int:
    from lensgen.eval.compare import compare, format_comparison, load_scores, run_name
    from lensgen.io import atomic_write_text

    table = format_comparison(compare(load_scores(args.a), load_scores(args.b)), run_name(args.a), run_name(args.b))
    print(table)
    if args.out:
        atomic_write_text(Path(args.out), table)
        print(f"wrote {args.out}")
    return 0


def image_file(sample: SampleResult) -> str:
    """Where a scored image is kept, relative to OUT/images: one folder per task, named by prompt id and seed."""
    return f"{sample.task}/{sample.id}-{sample.seed}.png"


class ImageKeeper:
    """Writes each scored image as soon as it is scored (memory stays flat over a long run), with the PNG text
    `lensgen generate` writes plus the task, prompt id, score and the judge's reason."""

    def __init__(self, folder: Path, height: int, width: int, model: str, steps: int | None, cfg: float | None,
                 classifier_scale: float | None = None):
        self.folder, self.height, self.width = folder, height, width
        self.model, self.steps, self.cfg, self.classifier_scale = model, steps, cfg, classifier_scale

    def __call__(self, sample: SampleResult, image: Image.Image) -> None:
        from lensgen.inference.generate import png_metadata, save_png

        info = png_metadata(prompt=sample.prompt, seed=sample.seed, height=self.height, width=self.width,
                            model=self.model, steps=self.steps, cfg=self.cfg, classifier_scale=self.classifier_scale,
                            task=sample.task, id=sample.id, score=sample.score, reason=sample.reason)
        save_png(self.folder / image_file(sample), image, info)

    def write_index(self, result: ShapesEvalResult) -> Path:
        """index.jsonl: one line per image (file, task, id, prompt, seed, score, reason), in scoring order."""
        import json

        from lensgen.io import atomic_write_text

        lines = [json.dumps({"file": image_file(s), "task": s.task, "id": s.id, "prompt": s.prompt, "seed": s.seed,
                             "score": s.score, "reason": s.reason}) for s in result.samples]
        path = self.folder / "index.jsonl"
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return path


def _check_args(args) -> float | None:
    """Everything checkable without the model, so a typo fails before the weights load; returns the classifier
    guidance scale the model samples with (None: no model, or one without a classifier)."""
    from lensgen.io import check_writable

    if args.n_per_prompt <= 0 or args.batch_size <= 0 or (args.limit is not None and args.limit <= 0):
        raise UserError("--n-per-prompt, --batch-size and --limit must be positive")
    if args.reasoner != "none" and not args.model:
        raise UserError("--reasoner goes with --model (ground truth and noise do not read the prompt's words)")
    if args.save_images and not args.out:
        raise UserError("--save-images needs --out DIR (the images go to DIR/images/)")
    if args.out:
        check_writable(Path(args.out) / "results.json")
    if args.model:
        from lensgen.inference.pipeline import classifier_scale_for, read_defaults
        from lensgen.sizes import parse_size

        defaults = read_defaults(args.model)
        defaults.resolve_size(*(parse_size(args.size) if args.size else (None, None)))
        defaults.sampling(args.steps, args.cfg, "--steps", "--cfg")
        return classifier_scale_for(args.model, defaults, args.classifier_scale)
    if args.classifier_scale is not None:
        raise UserError("--classifier-scale goes with --model")
    return None


def _eval_shapes(args) -> int:
    import json

    from lensgen.eval import shapes as se
    from lensgen.io import atomic_write_json, atomic_write_text
    from lensgen.shapes.evalset import load_prompts
    from lensgen.sizes import parse_size, validate_size

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    classifier_scale = _check_args(args)  # None: no model, or a model without a classifier
    specs = load_prompts(tasks, limit=args.limit)
    size = parse_size(args.size) if args.size else None
    steps, cfg = args.steps, args.cfg
    if args.codec and not args.ground_truth:
        raise UserError("--codec goes with --ground-truth (a model folder brings its own codec)")
    if args.model:
        from lensgen.inference.pipeline import LensPipeline

        pipe = LensPipeline.from_pretrained(args.model)
        h, w = size or (pipe.default_height, pipe.default_width)
        steps, cfg = pipe.defaults.sampling(steps, cfg)  # what it samples with, so the results say it
        generate = se.pipeline_generator(pipe, h, w, steps, cfg, classifier_scale)
        model, source = args.model, f"model {args.model}, {steps} steps, CFG {cfg:g}"
        if classifier_scale:
            source += f", classifier guidance {classifier_scale:g}"
        if args.reasoner != "none":
            from lensgen.reasoner import make_reasoner

            generate = se.reasoned_generator(generate, make_reasoner(args.reasoner), w / h)
            source += f", {args.reasoner} reasoner"
    else:
        h, w = validate_size(*(size or (64, 64)), multiple=8)
        if args.ground_truth:
            generate, source = se.ground_truth_generator(specs, h, w), "ground truth (ceiling)"
            model = "ground truth"
            if args.codec:
                from lensgen.models.vae import load_codec

                codec = load_codec(args.codec)
                h, w = validate_size(h, w, multiple=codec.spatial_factor)
                generate = se.codec_round_trip(generate, codec)
                source = f"ground truth through the codec {args.codec} (ceiling in its latent space)"
                model = f"ground truth through the codec {args.codec}"
        else:
            generate, source, model = se.noise_generator(h, w), "noise (floor)", "noise"
    sampled = (steps, cfg) if args.model else (None, None)  # ground truth and noise have no sampler settings
    keeper = ImageKeeper(Path(args.out) / "images", h, w, model, *sampled, classifier_scale) \
        if args.save_images else None
    result = se.evaluate(generate, n_per_prompt=args.n_per_prompt, batch_size=args.batch_size, seed=args.seed,
                         prompts=specs, progress=not args.no_progress, on_image=keeper)
    result.extra = {"source": source, "height": h, "width": w, "steps": steps, "cfg": cfg,
                    "classifier_scale": classifier_scale, "reasoner": args.reasoner}
    table = se.format_table(result, f"ShapesEval, {source}, {w}x{h}, {args.n_per_prompt} per prompt")
    print(table)
    if args.out:
        out = Path(args.out)
        atomic_write_json(out / "results.json", json.loads(json.dumps(result.to_dict())))
        atomic_write_text(out / "results.md", table)
        print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    if keeper is not None:
        print(f"wrote {len(result.samples)} images and {keeper.write_index(result)}")
    return 0
