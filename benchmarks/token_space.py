"""Is the token space the limit? The same small transformer trained from scratch in different token spaces.

The shipped Shapes models denoise the Shapes VAE's latents: 16 values per token, 8x8 tokens for a 64x64
image, where a hexagon is told from a circle by 0.004 of the judge's template cosine. This trains the
shapes-tiny transformer (6 blocks of width 256) from scratch on true single-object scenes of all six shapes
(pretraining's rectified-flow loss, the same scenes, steps, batches and seeds) in each token space asked:

- `vae`: the shipped one (the Shapes VAE, 8 px per token, 16 values);
- `pixel8`: pixels, 8 px per token (192 values): as many tokens, nothing lost to the latent;
- `pixel4`: pixels, 4 px per token (48 values): four times the tokens, a finer grid.

Then each model draws `--n` images of "a photo of a <colour> <shape>" per shape (CFG-free, DPM++ 2M, 20
steps) and the judge reads the largest object: the share read as asked, per shape (shape_margin.py's table).
A space whose model reads stars and hexagons right far more often at the same steps is the lever.

    python benchmarks/token_space.py --spaces vae pixel8 pixel4 --steps 1500        # ~80 min here
    python benchmarks/token_space.py --shapes star --steps 1500                     # stars alone
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lensgen.inference.pipeline import LensPipeline, PipelineDefaults
from lensgen.models.transformer import LensTransformer2DModel, preset
from lensgen.models.vae import PixelCodec, build_codec
from lensgen.shapes import captions, render
from lensgen.shapes.vocab import SHAPES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from self_fit import fine_tune  # noqa: E402  (sibling benchmarks)
from shape_margin import margins, samples, true_scenes  # noqa: E402

SPACES = {"vae": {"backend": "flux2-vae"}, "pixel8": {"backend": "pixel", "patch_size": 8},
          "pixel4": {"backend": "pixel", "patch_size": 4}}


def fresh_pipeline(space: str, text_encoder, seed: int = 0) -> LensPipeline:
    """The shapes-tiny transformer, randomly initialised for `space`'s tokens, with CFG-free defaults."""
    codec = build_codec(SPACES[space])
    channels = codec.token_channels
    per_side = codec.patch_size if isinstance(codec, PixelCodec) else codec.patch  # latent pixels per token side
    out = channels // (per_side * per_side)
    config = dataclasses.replace(preset("shapes-tiny"), patch_size=per_side, out_channels=out, in_channels=channels)
    torch.manual_seed(seed)
    defaults = PipelineDefaults(height=64, width=64, steps=20, cfg=1.0, max_side=64, schedule="train",
                                solver="dpm2", size_multiple=codec.spatial_factor)
    return LensPipeline(LensTransformer2DModel(config), codec, text_encoder, defaults, name=space)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=SPACES)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES,
                        help="the shapes trained on and drawn (one alone: whether a space's model can lay that "
                             "shape out at all, with no word to bind)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of each model")
    parser.add_argument("--images", type=int, default=8192, help="true single-object scenes to train on")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-4, help="AdamW rate (pretraining's)")
    parser.add_argument("--n", type=int, default=48, help="images drawn per shape and model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    per_shape = -(-args.images // len(args.shapes))
    scenes = [(key, scene) for shape in args.shapes for key, scene in true_scenes(shape, per_shape, 64, 77, "train")]
    images = [render(scene, 64, 64) for _, scene in scenes]
    texts = [captions(scene, key)["short"] for key, scene in scenes]
    text_encoder = LensPipeline.from_pretrained("shapes-tiny-base", device="cpu").text_encoder  # as pretrained
    table: dict = {}
    print(f"{'space':8} {'tokens':>6} {'train s':>8} {'loss':>7}  " + " ".join(f"{s:>8}" for s in args.shapes) + "     mean")
    for space in args.spaces:
        pipe = fresh_pipeline(space, text_encoder)
        t0 = time.perf_counter()
        pipe.transformer, losses = fine_tune(pipe, images, texts, args.steps, args.lr, args.batch, 0.995, 0,
                                             progress=False)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            right = {shape: margins(samples(pipe, shape, args.n, 64), shape) for shape in args.shapes}
        tokens = (64 // pipe.codec.spatial_factor) ** 2
        loss = statistics.mean(losses[-100:])
        mean = statistics.mean(r["right"] for r in right.values())
        table[space] = {"tokens": tokens, "train_seconds": seconds, "loss_last_100": loss, "mean_right": mean,
                        "shapes": right}
        print(f"{space:8} {tokens:6d} {seconds:8.0f} {loss:7.4f}  "
              + " ".join(f"{right[s]['right']:8.3f}" for s in args.shapes) + f" {mean:8.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return table


if __name__ == "__main__":
    main()
