"""Is the Shapes model limited by its size? Grow it deeper without changing what it draws, then train both.

More pretraining of the shipped 6-block model bought almost no loss (docs/rl-shapes-measurements.md, "More
pretraining instead"), and RL on it trades one task for another. If the model is too small for what it is
asked, the same training with more blocks should lower the loss faster. This writes a copy of a pipeline
folder whose transformer has one extra block after each block listed in `--after`, initialised as the
identity (its adaLN modulation is zero, so both gates are 0 and the block adds nothing): the grown model
computes the same velocity as the original, checked here on random inputs, and training then starts both
models from the same function.

    python benchmarks/grow_depth.py shapes-tiny-base --after 2 5 --out runs/grown-8
    lensgen train --config configs/shapes-tiny.yaml --set model.init_from=runs/grown-8 ...
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import torch

from lensgen.inference.pipeline import LensPipeline
from lensgen.models.transformer import LensBlock, LensTransformer2DModel


def identity_block(like: LensBlock) -> LensBlock:
    """A block shaped like `like` that returns its inputs: zero modulation gives zero gates. Its attention
    and MLP weights are `like`'s, so they start useful once training opens the gates."""
    block = copy.deepcopy(like)
    for mod in (block.img_mod, block.txt_mod):
        torch.nn.init.zeros_(mod[1].weight)
        torch.nn.init.zeros_(mod[1].bias)
    return block


def grow(model: LensTransformer2DModel, after: list[int]) -> LensTransformer2DModel:
    """A deeper copy of `model`: one identity block after each listed block index (0-based, repeats allowed)."""
    layers = model.config.num_layers
    bad = [i for i in after if not 0 <= i < layers]
    if bad:
        raise ValueError(f"--after takes block indices 0..{layers - 1}, got {bad}")
    blocks = []
    for i, block in enumerate(model.transformer_blocks):
        blocks.append(copy.deepcopy(block))
        blocks.extend(identity_block(block) for _ in range(after.count(i)))
    grown = LensTransformer2DModel(replace(model.config, num_layers=len(blocks)))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("transformer_blocks.")}
    for j, block in enumerate(blocks):
        state.update({f"transformer_blocks.{j}.{k}": v for k, v in block.state_dict().items()})
    grown.load_state_dict(state)
    return grown


def max_difference(a: LensTransformer2DModel, b: LensTransformer2DModel, seed: int = 0) -> float:
    """The largest |velocity difference| of two models on the same random tokens, text and noise levels."""
    cfg = a.config
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(3, 16, cfg.in_channels, generator=g)
    txt = torch.randn(3, 7, cfg.num_text_layers, cfg.enc_hidden_dim, generator=g)
    sigma = torch.tensor([0.1, 0.5, 0.95])
    with torch.no_grad():
        return (a(img, txt, sigma, (4, 4)) - b(img, txt, sigma, (4, 4))).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a pipeline folder or a shipped model's name")
    ap.add_argument("--after", type=int, nargs="+", required=True,
                    help="insert one identity block after each of these blocks (0-based)")
    ap.add_argument("--out", type=Path, required=True, help="where the grown pipeline folder goes")
    args = ap.parse_args()

    pipe = LensPipeline.from_pretrained(args.model)
    model = pipe.transformer
    grown = grow(model, args.after)
    diff = max_difference(model, grown)
    if diff > 1e-5:
        raise SystemExit(f"the grown model does not compute the original's velocity (max difference {diff:.2e})")
    pipe.transformer, pipe.name = grown, f"{pipe.name}, grown to {grown.config.num_layers} blocks"
    pipe.save_pretrained(args.out, storage="fp32")
    params = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in grown.parameters())
    print(f"{args.model}: {model.config.num_layers} -> {grown.config.num_layers} blocks, {params[0] / 1e6:.1f}M -> "
          f"{params[1] / 1e6:.1f}M parameters, same velocity (max difference {diff:.1e}); wrote {args.out}")


if __name__ == "__main__":
    main()
