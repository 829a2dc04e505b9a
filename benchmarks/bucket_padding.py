"""Padding waste of the mixed-resolution batch sampler: the share of image-token slots that are padding.

With `mixed` batches (Lens: every step mixes sizes) each sample is padded to the longest in its batch;
`class` batches mix the aspect ratios of one size class; `grouped` batches draw from one bucket and pad
nothing. Columns after the first give the padded share of all image-token slots over one epoch. Items get the buckets of the Shapes source
(uniform over the 27) or, for the Lens table, a uniform draw too (real data is skewed towards 1:1 and
3:4, which lowers the waste). Usage: python benchmarks/bucket_padding.py
"""

from __future__ import annotations

import argparse
import random

from lensgen.data.bucket_sampler import MixedResolutionSampler
from lensgen.data.buckets import BucketTable

SETUPS = {
    # name: (bases, multiple, pixels per token)
    "shapes-tiny (48/64/80 px, 8 px tokens)": ((48, 64, 80), 8, 8),
    "lens-3.8b (512/768/1024 px, 16 px tokens)": ((512, 768, 1024), 16, 16),
}


def epoch_waste(buckets: list[int], tokens: list[int], classes: list[int], batch: int, mode: str):
    """Mean per-batch waste, and the token-weighted waste (padded slots / all slots) over one epoch."""
    sampler = MixedResolutionSampler(buckets, tokens, batch, seed=0, mode=mode, bucket_class=classes)
    per_batch, real, slots = [], 0, 0
    for _, idx in zip(range(sampler.batches_per_epoch()), sampler, strict=False):
        t = [tokens[buckets[i]] for i in idx]
        per_batch.append(sampler.padding_waste(idx))
        real += sum(t)
        slots += len(t) * max(t)
    return sum(per_batch) / len(per_batch), 1 - real / slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--batch-sizes", default="4,16,32")
    args = parser.parse_args()
    rng = random.Random(0)
    print("| table | batch | mixed: mean waste per batch | mixed | class | grouped |")
    print("|---|---|---|---|---|---|")
    for name, (bases, multiple, patch) in SETUPS.items():
        table = BucketTable(bases=bases, multiple=multiple)
        tokens = [b.tokens(patch) for b in table]
        classes = [b.index // table.num_ratios for b in table]
        buckets = [rng.randrange(len(table)) for _ in range(args.items)]
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            mixed, by_class, grouped = (epoch_waste(buckets, tokens, classes, batch, m)
                                        for m in ("mixed", "class", "grouped"))
            print(f"| {name} | {batch} | {mixed[0]:.1%} | {mixed[1]:.1%} | {by_class[1]:.1%} | {grouped[1]:.1%} |")


if __name__ == "__main__":
    main()
