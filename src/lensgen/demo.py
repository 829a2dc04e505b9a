"""`lensgen demo`: the embedded main job, sized for a 2-core laptop in a few minutes.

It shows the recipe's stages that run on a CPU: a grid from the shipped Shapes model across aspect ratios,
the same grid from a few-step Turbo model with both wall times (when one is shipped or given), and a short
pretraining run from scratch (the same trainer as `lensgen train`) whose
loss falls on screen, with a few images sampled from the model it exports. Everything lands in one HTML
page with the images, prompts and loss plot; every PNG carries the text metadata `lensgen generate` writes.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

DEMO_PROMPTS = [
    ("a red circle", "64x64"),
    ("two blue squares", "64x64"),
    ("a photo of a yellow star left of a green triangle", "96x48"),
    ("three purple hexagons", "48x96"),
    ("a white heart", "72x56"),
    ("a photo of an orange triangle above a pink circle", "56x72"),
    ("a brown square and a blue star", "80x48"),
    ("four green circles", "64x64"),
]


def demo_train_config(out_dir: Path, steps: int):
    """The shapes-tiny trainer at demo scale: small buckets, short captions, every step logged."""
    from lensgen.train.config import TrainConfig

    cfg = TrainConfig(out_dir=str(out_dir))
    cfg.data.bases = [32, 48, 64]
    cfg.data.caption = "short"
    cfg.data.sampler = "grouped"
    cfg.optim.steps = steps
    cfg.optim.batch_size = 16
    cfg.optim.lr = 1e-3
    cfg.optim.warmup_steps = max(1, steps // 10)
    cfg.log.val_every = max(1, steps // 10)
    cfg.log.val_images_every = 0
    cfg.log.tensorboard = False
    cfg.checkpoint.every = steps
    cfg.checkpoint.keep = 1
    cfg.validate()
    return cfg


def loss_plot_png(metrics: list[dict]) -> bytes:
    """Training loss (raw and smoothed) and the fixed-batch validation loss, as a PNG."""
    from lensgen.plots import figure_png, new_axes, plot_noisy_curve

    val = [(m["step"], sum(v for k, v in m.items() if k.startswith("val_loss@")) /
            sum(1 for k in m if k.startswith("val_loss@"))) for m in metrics if "val_loss@0.5" in m]
    fig, ax = new_axes()
    plot_noisy_curve(ax, [m["step"] for m in metrics], [m["loss"] for m in metrics],
                     "training loss (random sigma per sample)", divisions=15)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="#d62728", label="validation loss (fixed batch, 5 sigmas)")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


TRAINED_SAMPLES = 4  # prompts sampled from the from-scratch model (the first of DEMO_PROMPTS)


def sample_cards(pipe, model: str, prompts: list[tuple[str, str]], out: Path, prefix: str) -> list[str]:
    """Sample each (prompt, size) with seed = its index, write OUT/images/PREFIXnn.png with the PNG text
    `lensgen generate` writes, and return one HTML <figure> per image."""
    from lensgen.inference.generate import png_metadata, save_png
    from lensgen.sizes import parse_size

    steps, cfg = pipe.defaults.sampling(None, None)
    guidance = {"classifier_scale": pipe.defaults.classifier_scale} if pipe.classifier is not None else {}
    cards = []
    for i, (prompt, size) in enumerate(prompts):
        height, width = parse_size(size)
        image = pipe(prompt, height=height, width=width, steps=steps, cfg=cfg, seed=i, progress=False)[0]
        name = f"images/{prefix}{i:02d}.png"
        save_png(out / name, image, png_metadata(prompt=prompt, negative_prompt="", seed=i, steps=steps, cfg=cfg,
                                                 height=height, width=width, model=model, **guidance))
        cards.append(f'<figure><img src="{name}" width="{width * 3}" height="{height * 3}">'
                     f"<figcaption>{html.escape(prompt)}<br><small>{size}, seed {i}</small></figcaption></figure>")
        print(f"[{i + 1}/{len(prompts)}] {prompt} ({size})")
    return cards


def trained_model_html(out: Path, export: Path) -> str:
    """A few images sampled from the short run's exported EMA model: what a few minutes of training draw."""
    from lensgen.inference.pipeline import LensPipeline

    if not (export / "model_index.json").is_file():
        return "<p>The run exported no model to sample from.</p>"
    pipe = LensPipeline.from_pretrained(export)
    prompts = DEMO_PROMPTS[:TRAINED_SAMPLES]
    print(f"sampling {len(prompts)} images from the model just trained ({export}) ...")
    cards = sample_cards(pipe, str(export), prompts, out, prefix="train-")
    return (f"<h3>Samples from the model just trained</h3><p>Model: <code>train/final</code> "
            f"({html.escape(pipe.name)}); {sampling(pipe)}; the first "
            f"{len(prompts)} prompts and seeds of the grid above, to compare.</p>{''.join(cards)}")


def sampling(pipe) -> str:
    """How a pipeline samples at its defaults, for the page: steps, CFG and any classifier guidance."""
    d = pipe.defaults
    guided = pipe.classifier is not None and d.classifier_scale
    guided = f", classifier guidance {d.classifier_scale:g}" if guided else ""
    return f"{d.steps} steps, CFG {d.cfg}{guided}"


TURBO_MODEL = "shapes-tiny-turbo"  # the shipped 4-step student, shown beside the grid when the package has it
BEFORE_RL_MODEL = "shapes-tiny-base"  # the pretrained model the shipped one was post-trained from


def beside_html(out: Path, other: str, base_pipe, base_seconds: float, prefix: str, what: str) -> str:
    """The grid again from another model (`what` it is), same prompts and seeds, with both wall times and the
    transformer passes per image."""
    from lensgen.inference.pipeline import LensPipeline

    pipe = LensPipeline.from_pretrained(other)
    print(f"sampling the same {len(DEMO_PROMPTS)} prompts with {what} ({other}) ...")
    start = time.perf_counter()
    cards = sample_cards(pipe, other, DEMO_PROMPTS, out, prefix=prefix)
    seconds = time.perf_counter() - start

    def passes(p) -> int:
        return p.defaults.steps * (2 if p.defaults.cfg != 1.0 else 1)

    speed = base_seconds / max(seconds, 1e-9)
    ratio = f"<b>{speed:.1f}x</b> faster" if speed >= 1 else f"<b>{1 / speed:.1f}x</b> slower"
    return (f"<p>Model: {html.escape(pipe.name)}; {sampling(pipe)} "
            f"({passes(pipe)} transformer passes per image against the grid's {passes(base_pipe)}). The same "
            f"prompts and seeds in {seconds:.1f} s against {base_seconds:.1f} s: {ratio} on this "
            f"machine.</p>{''.join(cards)}")


def run_demo(out: Path, model: str | None, train_steps: int, turbo: str | None = None,
             before: str | None = None) -> Path:
    from lensgen.inference.generate import load_pipeline
    from lensgen.inference.pipeline import shipped_models
    from lensgen.io import atomic_write_bytes, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    pipe = load_pipeline(model)
    start = time.perf_counter()
    cards = sample_cards(pipe, model or pipe.name, DEMO_PROMPTS, out, prefix="")
    grid_s = time.perf_counter() - start
    if turbo is None and TURBO_MODEL in shipped_models():
        turbo = TURBO_MODEL
    turbo_section = beside_html(out, turbo, pipe, grid_s, "turbo-", "the Turbo model") if turbo else \
        "<p>No Turbo model in this package; <code>--turbo DIR</code> shows a <code>lensgen distill</code> export.</p>"
    if before is None and model is None and BEFORE_RL_MODEL in shipped_models():
        before = BEFORE_RL_MODEL
    before_section = beside_html(out, before, pipe, grid_s, "before-", "the model before RL") if before else \
        "<p>No model before RL to compare with; <code>--before DIR</code> names one.</p>"

    train_html = "<p>Training skipped (--train-steps 0).</p>"
    if train_steps > 0:
        from lensgen.train.trainer import Trainer

        run_dir = out / "train"
        if (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()  # a fresh curve each time the demo runs
        print(f"training shapes-tiny from scratch for {train_steps} steps (batch 16) ...")
        summary = Trainer(demo_train_config(run_dir, train_steps)).run()
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        atomic_write_bytes(out / "loss.png", loss_plot_png(metrics))
        first = sum(m["loss"] for m in metrics[:10]) / len(metrics[:10])
        last = sum(m["loss"] for m in metrics[-10:]) / len(metrics[-10:])
        train_html = (f'<p>{summary["steps"]} steps from scratch in {summary["wall_s"]:.0f} s '
                      f'({summary["images_per_s"]:.1f} images/s); mean loss of the first 10 steps {first:.3f}, '
                      f'of the last 10 {last:.3f}. Run folder: <code>train/</code> (metrics.jsonl, checkpoint, '
                      f'EMA export in <code>train/final</code>).</p><img src="loss.png" alt="loss curve">'
                      + trained_model_html(out, run_dir / "final"))
    page = f"""<!doctype html><meta charset="utf-8"><title>lensgen demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} figure{{display:inline-block;margin:1em;vertical-align:top}}
figure img{{image-rendering:pixelated;border:1px solid #ccc}} figcaption{{max-width:300px}}</style>
<h1>lensgen demo</h1>
<h2>Generations</h2>
<p>Model: {html.escape(pipe.name)}; {sampling(pipe)}; eight prompts across
aspect ratios, generated in {grid_s:.1f} s on this machine.</p>
{"".join(cards)}
<h2>Before RL: the same grid from the pretrained model</h2>
{before_section}
<h2>Turbo: the same grid in a few steps</h2>
{turbo_section}
<h2>Pretraining from scratch</h2>
{train_html}
"""
    atomic_write_text(out / "index.html", page)
    return out / "index.html"


def cmd_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    page = run_demo(Path(args.out), args.model, args.train_steps, args.turbo, args.before)
    print(f"wrote {page} in {time.perf_counter() - start:.0f} s")
    print("to make images from a web page: run `lensgen serve` and open http://127.0.0.1:8000/ "
          "(docs/serving.md)")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    d = groups[""].add_parser(
        "demo", help="the embedded demo: a generation grid and a short training run, as an HTML page",
        description="Generate a grid for eight prompts across aspect ratios with the default (shipped) model, "
                    "again with the model before RL and with the Turbo model (each timed), train shapes-tiny "
                    "from scratch for a few minutes, sample a few images from the model it exports, and write "
                    "OUT/index.html with the images, prompts and loss plot.")
    d.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    d.add_argument("--model", help="model folder for the grid (default: the shipped model)")
    d.add_argument("--turbo", help="a few-step model (a `lensgen distill` export) to sample the grid again "
                                   f"beside the base, with both times (default: the shipped {TURBO_MODEL} if any)")
    d.add_argument("--before", help="the model that the grid's model was post-trained from, to sample the grid "
                                    f"again with it (default with the shipped model: {BEFORE_RL_MODEL}, before RL)")
    d.add_argument("--train-steps", type=int, default=300,
                   help="steps of the from-scratch training run (default 300, about 3 minutes on 2 cores; "
                        "0 skips it)")
    d.set_defaults(func=cmd_demo)


__all__ = ["DEMO_PROMPTS", "beside_html", "demo_train_config", "loss_plot_png", "run_demo", "sample_cards",
           "trained_model_html"]
