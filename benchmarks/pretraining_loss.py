"""How far has post-training moved a model from its pretraining data? Pretraining's loss, paired.

RL sharpens a model: what the reward pays for rises while the model leaves the data's conditional
velocity (the flow-matching optimum). This prints each model's rectified-flow loss on the same batches
of Shapes scenes (the batches `lensgen rl`'s pretraining anchor, `ptx`, draws: same sizes, captions,
sigma and noise for every model) and each model's difference to the first one, paired over batches with
its standard error.

    python benchmarks/pretraining_loss.py shapes-tiny-base shapes-tiny runs/rl-shapes/final --batches 30
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lensgen.data.buckets import BucketTable
from lensgen.inference.pipeline import LensPipeline
from lensgen.rl.config import RLPtxConfig
from lensgen.rl.ptx import PretrainAnchor
from lensgen.train.config import DataConfig
from lensgen.train.parallel import DistInfo


def losses(model: str, batches: int, batch_size: int, seed: int = 0) -> list[float]:
    """The model's pretraining loss on each of the first `batches` anchor batches (its own VAE and text encoder)."""
    pipe = LensPipeline.from_pretrained(model)
    data = DataConfig()  # pretraining's buckets
    table = BucketTable(bases=tuple(data.bases), multiple=data.multiple)
    anchor = PretrainAnchor(RLPtxConfig(weight=1.0, batch_size=batch_size), table, pipe.codec, pipe.text_encoder,
                            DistInfo(), seed)
    off = torch.autocast("cpu", enabled=False)
    with torch.no_grad():
        return [anchor.loss(pipe.transformer, (seed, step, 0), off, torch.device("cpu"), torch.float32).item()
                for step in range(batches)]


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of b - a over batches and its standard error."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    return statistics.mean(d), (statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="shipped model names or pipeline folders; the first is the baseline")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = {m: losses(m, args.batches, args.batch_size) for m in args.models}
    base = args.models[0]
    print(f"pretraining loss on {args.batches} batches of {args.batch_size} Shapes scenes (same sigma and noise)")
    for m, values in table.items():
        mean, err = paired(table[base], values)
        diff = "" if m == base else f"  {mean:+.4f} ± {err:.4f} vs {base}"
        print(f"{m:40s} {statistics.mean(values):.4f}{diff}")
    return table


if __name__ == "__main__":
    main()
