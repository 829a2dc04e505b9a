"""Shapes judge accuracy: N rendered scenes read back at 64 px and 256 px, clean and degraded; OCR per size.

Per scene: count exact (as many recognised objects as in the spec, nothing extra), colour and shape per
object (each true object matched to the nearest detection), scene exact (every object and the sign
right). Degradations: Gaussian noise (sigma 10 grey levels), Gaussian blur (sigma 0.8 px), JPEG
quality 75. OCR: exact word read on scenes that all carry a sign, per render size.

    python benchmarks/shapes_judge.py            # 1,000 scenes (about 3 minutes on 2 cores)
    python benchmarks/shapes_judge.py --n 200 --ocr-n 20
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image, ImageFilter

from lensgen.shapes import SceneConfig, generate_scene, render
from lensgen.shapes.judge import detect
from lensgen.sizes import size_table


def noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, np.float32) + rng.normal(0, 10, (img.height, img.width, 3))
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def blur(img: Image.Image, rng) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(0.8))


def jpeg(img: Image.Image, rng) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


DEGRADATIONS = {"clean": lambda img, rng: img, "noise s=10": noise, "blur s=0.8px": blur, "JPEG q75": jpeg}


def score_scene(scene, det, h, w) -> tuple[bool, int, int, int, bool]:
    count_ok = len(det.shapes()) == len(det.objects) == len(scene.objects)
    colour = shape = 0
    free = list(det.objects)
    for o in scene.objects:
        if not free:
            break
        d = min(free, key=lambda d: (d.centre[0] - o.x * w) ** 2 + (d.centre[1] - o.y * h) ** 2)
        free.remove(d)
        colour += d.colour == o.colour
        shape += d.shape == o.shape
    sign_ok = len(det.signs) == (scene.sign is not None)
    exact = count_ok and sign_ok and colour == shape == len(scene.objects)
    return count_ok, colour, shape, len(scene.objects), exact


def run(n: int, sizes: list[tuple[int, int]], label: str, degrade, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = colours = shapes = objects = exact = 0
    seconds = cpu = 0.0
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        scene = generate_scene(100_000 + i, w / h, SceneConfig(p_text=0.2), split="any")
        img = degrade(render(scene, h, w), rng)
        start, start_cpu = time.perf_counter(), time.process_time()
        det = detect(img)
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        c, col, shp, nobj, ex = score_scene(scene, det, h, w)
        counts, colours, shapes, objects, exact = counts + c, colours + col, shapes + shp, objects + nobj, exact + ex
    return {"label": label, "count": counts / n, "colour": colours / objects, "shape": shapes / objects,
            "exact": exact / n, "ms": 1000 * seconds / n, "cpu_ms": 1000 * cpu / n}


def ocr_accuracy(n: int, size: int) -> tuple[float, float]:
    from lensgen.shapes.ocr import text_similarity

    ok, sim = 0, 0.0
    signed = (s for s in (generate_scene(200_000 + i, 1.0, SceneConfig(p_text=1.0), split="any")
                          for i in range(10 * n)) if s.sign is not None)
    for _, scene in zip(range(n), signed):
        det = detect(render(scene, size, size), ocr=True)
        ok += det.text == scene.sign.word
        sim += text_similarity(det.text or "", scene.sign.word)
    return ok / n, sim / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="scenes per row")
    p.add_argument("--ocr-n", type=int, default=50, help="signed scenes per OCR size")
    p.add_argument("--only", choices=("judge", "ocr"), default=None, help="run one of the two tables")
    args = p.parse_args()
    if args.only != "ocr":
        judge_table(args.n)
    if args.only != "judge":
        ocr_table(args.ocr_n)


def judge_table(n: int) -> None:
    detect(render(generate_scene(0), 64, 64))  # build the shape templates once, outside the timings
    rows = []
    for size in (64, 256):
        for name, fn in DEGRADATIONS.items():
            rows.append(run(n, [(size, size)], f"{size}x{size} {name}", fn))
            print(f"... {rows[-1]['label']}", flush=True)
    rows.append(run(n, size_table(64, 8), "64 class, 9 ratios (48-96 px sides)", DEGRADATIONS["clean"]))
    print(f"\nJudge accuracy on {n} rendered scenes per row (1-6 objects, 20 % with a sign)\n")
    print("| images | count exact | colour / object | shape / object | scene exact | ms / image (CPU, wall) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['label']} | {100 * r['count']:.1f} % | {100 * r['colour']:.1f} % | {100 * r['shape']:.1f} % "
              f"| {100 * r['exact']:.1f} % | {r['cpu_ms']:.1f}, {r['ms']:.1f} |")


def ocr_table(n: int) -> None:
    print(f"\nOCR on {n} scenes with a sign per size (word exact / mean 1 - NED, seconds per image)\n")
    print("| size | word exact | 1 - NED | s / image |")
    print("| --- | ---: | ---: | ---: |")
    for size in (64, 96, 128, 256):
        start = time.perf_counter()
        exact, sim = ocr_accuracy(n, size)
        print(f"| {size}x{size} | {100 * exact:.1f} % | {sim:.3f} | {(time.perf_counter() - start) / n:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
