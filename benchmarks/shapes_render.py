"""Shapes world throughput and caption statistics: scenes/s, render images/s at 64 px and 256 px, and
dense/short caption word counts over a mix of the nine aspect ratios.

    python benchmarks/shapes_render.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lensgen.shapes import SceneConfig, captions, generate_scene, render


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="scenes for the caption statistics")
    args = p.parse_args()
    aspects = [0.5, 0.55, 0.64, 0.78, 1.0, 1.29, 1.56, 1.83, 2.0]
    scenes = [generate_scene(i, aspects[i % 9], SceneConfig(p_text=0.2)) for i in range(args.n)]
    gen = rate(lambda i: generate_scene(i, 1.0), 500)
    cap = rate(lambda i: captions(scenes[i % len(scenes)], i), 500)
    print("| step | per second |")
    print("| --- | ---: |")
    print(f"| generate a scene (training split) | {gen:,.0f} |")
    print(f"| write both captions | {cap:,.0f} |")
    for size, n in ((64, 1000), (256, 200)):
        r = rate(lambda i, s=size: render(scenes[i % len(scenes)], s, s), n)
        print(f"| render {size}x{size} | {r:,.0f} images |")
    dense = np.array([len(captions(s, i)["dense"].split()) for i, s in enumerate(scenes)])
    short = np.array([len(captions(s, i)["short"].split()) for i, s in enumerate(scenes)])
    print(f"\nCaption word counts over {args.n} training scenes (nine aspect ratios, 20 % with a sign)\n")
    print("| caption | mean | min | p5 | median | p95 | max |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, a in (("dense", dense), ("short", short)):
        print(f"| {name} | {a.mean():.1f} | {a.min()} | {np.percentile(a, 5):.0f} | {np.median(a):.0f} "
              f"| {np.percentile(a, 95):.0f} | {a.max()} |")
    counts = np.bincount([len(s.objects) for s in scenes], minlength=7)[1:]
    print("\nobjects per scene (1..6):", ", ".join(f"{k + 1}: {c}" for k, c in enumerate(counts)))


if __name__ == "__main__":
    main()
