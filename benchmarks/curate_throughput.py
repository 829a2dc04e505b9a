"""Curation throughput on this machine: images/s per core for each CPU step, and 1 -> 2 worker speed-up.

    python benchmarks/curate_throughput.py                       # per-step table + 1 vs 2 workers
    python benchmarks/curate_throughput.py --images 400          # more images, steadier numbers
    python benchmarks/curate_throughput.py --mixed 3000 --out /tmp/mixed   # a full run over a mixed set

The images are hand-made (lensgen.data.curate.synth): photo-like renders of random sizes and aspect
ratios (400-900 px shorter side, JPEG), with blurred / flat / dark / bright / small / corrupt
variants and near and exact copies mixed in. Per-step figures use one thread per library.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def per_step_table(folder: Path, repeats: int = 1) -> list[tuple[str, int, float]]:
    import cv2

    from lensgen.data.curate.config import CurateConfig
    from lensgen.data.curate.inputs import plan_units, read_unit
    from lensgen.data.curate.steps.base import Item
    from lensgen.data.curate.steps.corrupt import decode_all
    from lensgen.data.curate.steps.embed import ThumbnailEmbedder
    from lensgen.data.curate.steps.nsfw import NsfwStep
    from lensgen.data.curate.steps.pixel_stats import BrightnessStep, ClarityStep, EntropyStep, ResolutionStep

    cv2.setNumThreads(1)
    config = CurateConfig()
    plan = plan_units(folder, "auto", config.input.extensions, 10**9)
    samples = list(read_unit(plan.root, plan.units[0], "real"))
    rows = []
    start = time.perf_counter()
    items = [Item(s) for s in samples]
    decoded = decode_all(items, config.corrupt, config.run.work_size)
    rows.append(("corrupt (full decode + working copy)", len(items), time.perf_counter() - start))
    steps = [ResolutionStep(config.resolution), NsfwStep(config.nsfw, threads=1), ClarityStep(config.clarity),
             EntropyStep(config.entropy), BrightnessStep(config.brightness)]
    for step in steps:
        for item in decoded:  # each step pays for its own greyscale conversion
            item.cache.clear()
        start = time.perf_counter()
        step.score(decoded)
        rows.append((step.name, len(decoded), time.perf_counter() - start))
    embedder = ThumbnailEmbedder(config.dedup.thumbnail_size)
    start = time.perf_counter()
    embedder.embed([i.image for i in decoded])
    rows.append(("dedup embedding (thumbnail)", len(decoded), time.perf_counter() - start))
    return rows


def pipeline_rate(folder: Path, workers: int, shard_size: int) -> tuple[float, dict]:
    from lensgen.data.curate.config import load_config
    from lensgen.data.curate.pipeline import run_curation

    config = load_config(None, {"run": {"workers": workers, "shard_size": shard_size, "progress": False}})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run_curation(folder, out, config)
        return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240, help="images for the throughput figures")
    parser.add_argument("--mixed", type=int, default=0, help="instead: a full run over this many mixed images")
    parser.add_argument("--out", help="output folder of the --mixed run (kept for inspection)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the --mixed run")
    args = parser.parse_args()
    from lensgen.data.curate.synth import write_mixed_set

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        if args.mixed:
            start = time.perf_counter()
            kinds = write_mixed_set(folder, args.mixed, seed=0)
            print(f"wrote {args.mixed} mixed images in {time.perf_counter() - start:.0f} s: {kinds}")
            run_mixed(folder, Path(args.out or Path(tmp) / "out"), args.workers)
            return
        clean = {"clean": 0.8, "blurred": 0.05, "flat": 0.05, "dark": 0.05, "small": 0.05}
        write_mixed_set(folder, args.images, seed=1, weights=clean)
        print(f"{args.images} images (400-900 px shorter side, JPEG), {os.cpu_count()} CPU cores, "
              "one thread per step\n")
        print(f"{'step':<38} {'images':>6} {'ms/image':>9} {'images/s/core':>14}")
        for name, n, seconds in per_step_table(folder):
            print(f"{name:<38} {n:>6} {1000 * seconds / n:>9.2f} {n / seconds:>14.1f}")
        shard_size = max(8, args.images // 16)
        t1, s1 = pipeline_rate(folder, 1, shard_size)
        t2, s2 = pipeline_rate(folder, 2, shard_size)
        print(f"\nwhole pipeline (score + dedup + write + summary), {args.images} images, shard_size {shard_size}:")
        print(f"  1 worker : {t1:6.1f} s  {args.images / t1:6.1f} images/s")
        print(f"  2 workers: {t2:6.1f} s  {args.images / t2:6.1f} images/s   speed-up {t1 / t2:.2f}x "
              "(includes starting 2 spawned worker processes)")
        assert s1["kept"] == s2["kept"]


def run_mixed(folder: Path, out: Path, workers: int) -> None:
    from lensgen.data.curate.config import load_config
    from lensgen.data.curate.pipeline import run_curation
    from lensgen.data.curate.summary import format_table

    config = load_config(None, {"run": {"workers": workers, "shard_size": 250}})
    start = time.perf_counter()
    summary = run_curation(folder, out, config)
    print(f"\n$ lensgen data curate IN {out} --workers {workers}   ({time.perf_counter() - start:.0f} s)")
    print(format_table(summary))
    print("dedup:", summary["dedup"])
    fill = {f"{b['base']}:{b['width']}x{b['height']}": b["count"] for b in summary["buckets"] if b["count"]}
    print("bucket fill (kept):", fill)
    print("short side (kept):", dict(zip(summary["short_side_hist"]["edges"], summary["short_side_hist"]["kept"])))
    print(f"outputs in {out}: shards/, manifest/, summary.json, summary.png")


if __name__ == "__main__":
    main()
