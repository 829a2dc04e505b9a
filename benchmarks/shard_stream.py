"""Shard readers for training: memory and throughput of the in-memory index against the stream.

`data.source: shards` (`ShardSource`) reads every shard up front and keeps each sample's bytes, so its
memory grows with the corpus; `data.source: stream` (`ShardStream`) holds only its shuffle buffer and
batch queues. Both are timed over one epoch of batches (read, decode, resize to the bucket), in the
same run, on the same shards; memory is the Python heap peak (tracemalloc), which is where the image
bytes live. Usage: python benchmarks/shard_stream.py [--samples 2000 --shard-size 250]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import tracemalloc
from itertools import islice
from pathlib import Path

from PIL import Image

from lensgen.data.bucket_sampler import MixedResolutionSampler
from lensgen.data.buckets import BucketTable
from lensgen.data.shard_stream import ShardStream
from lensgen.data.shards import shard_path, write_shard
from lensgen.data.sources import ShardSource


def make_corpus(folder: Path, samples: int, shard_size: int, max_side: int) -> int:
    rng = random.Random(0)
    total = 0
    for s in range(0, samples, shard_size):
        items = []
        for i in range(s, min(s + shard_size, samples)):
            w, h = rng.randint(max_side // 2, max_side), rng.randint(max_side // 2, max_side)
            noise = Image.effect_noise((w, h), 40).convert("RGB")  # incompressible-ish, like photos
            items.append({"__key__": f"{i:08d}", "png": noise,
                          "json": {"captions": {"dense": f"image {i} " * 20, "short": f"image {i}"}}})
        write_shard(shard_path(folder, s // shard_size), items)
    for p in folder.glob("*.tar"):
        total += p.stat().st_size
    return total


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    count = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return count, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--max-side", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--shuffle-buffer", type=int, default=256)
    args = parser.parse_args()
    table = BucketTable(bases=(48, 64, 80), multiple=8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = make_corpus(folder, args.samples, args.shard_size, args.max_side)
        steps = args.samples // args.batch

        def indexed():
            source = ShardSource(folder, table)
            sampler = MixedResolutionSampler([source.bucket_of(i) for i in range(len(source))],
                                             [b.tokens(8) for b in table], args.batch, mode="grouped")
            return sum(len([source.load(i) for i in batch]) for batch in islice(iter(sampler), steps))

        def streamed():
            stream = ShardStream(folder, table, args.batch, 8, mode="grouped", shuffle_buffer=args.shuffle_buffer)
            return sum(len([stream.load(r) for r in batch]) for batch in islice(iter(stream), steps))

        print(f"{args.samples} samples in {args.samples // args.shard_size} shards, {size / 2**20:.1f} MiB on disk; "
              f"{steps} batches of {args.batch} (grouped), shuffle buffer {args.shuffle_buffer}")
        rows = {name: measure(fn) for name, fn in (("shards (indexed)", indexed), ("stream", streamed))}
        print(f"{'reader':<18} {'images/s':>9} {'heap peak MiB':>14}")
        for name, (count, seconds, peak) in rows.items():
            print(f"{name:<18} {count / seconds:>9.0f} {peak / 2**20:>14.1f}")
        (ci, si, pi), (cs, ss, ps) = rows.values()
        print(f"stream / indexed: throughput {cs / ss / (ci / si):.2f}x, memory {ps / pi:.2f}x")


if __name__ == "__main__":
    main()
