"""Write N Shapes scenes as WebDataset shards at mixed sizes (3 size classes x 9 aspect ratios).

Sample i is a pure function of (seed, i): its size, scene and captions come from its own RNG, so a
resumed job skips the shards that exist (each is written atomically) and the summary can recount
skipped shards without reading them back.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from lensgen.data.shards import shard_path, write_shard
from lensgen.io import atomic_write_json
from lensgen.shapes.captions import captions
from lensgen.shapes.render import render
from lensgen.shapes.scene import Scene, SceneConfig, generate_scene
from lensgen.sizes import size_table

SUMMARY = "summary.json"


@dataclass
class ShapesDataConfig:
    n: int
    out: str
    seed: int = 0
    shard_size: int = 1000
    bases: tuple[int, ...] = (64, 96, 128)  # square side of each size class
    multiple: int = 8
    scene: SceneConfig = field(default_factory=SceneConfig)

    def __post_init__(self):
        if self.n <= 0 or self.shard_size <= 0:
            raise ValueError(f"n and shard_size must be positive, got n={self.n}, shard_size={self.shard_size}")

    def sizes(self) -> list[tuple[int, int, int]]:
        """(base, height, width) for every size class and aspect ratio."""
        return [(b, h, w) for b in self.bases for h, w in size_table(b, self.multiple)]


def make_sample(cfg: ShapesDataConfig, index: int, sizes: list[tuple[int, int, int]], with_image: bool = True
                ) -> tuple[Scene, dict]:
    """Sample `index`: its scene and its record (the image under 'png' when with_image)."""
    rng = np.random.default_rng([cfg.seed, index])
    base, h, w = sizes[int(rng.integers(len(sizes)))]
    scene = generate_scene(rng, aspect=w / h, config=cfg.scene, split="train")
    meta = {"captions": captions(scene, int(rng.integers(2**31))), "scene": scene.to_dict(), "height": h,
            "width": w, "size_class": base, "source": "synthetic", "index": index, "seed": cfg.seed}
    record = {"__key__": f"{index:09d}", "json": meta}
    if with_image:
        record["png"] = render(scene, h, w)
    return scene, record


def _stats(values: list[int]) -> dict:
    a = np.array(values)
    return {"mean": round(float(a.mean()), 2), "min": int(a.min()), "p5": float(np.percentile(a, 5)),
            "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": int(a.max())}


def write_dataset(cfg: ShapesDataConfig, progress: bool = True) -> dict:
    """Write (or finish) the dataset under cfg.out; returns the summary also saved as summary.json."""
    from tqdm import tqdm

    sizes = cfg.sizes()
    n_shards = (cfg.n + cfg.shard_size - 1) // cfg.shard_size
    existing = {k for k in range(n_shards) if shard_path(cfg.out, k).exists()}
    todo = sum(min(cfg.shard_size, cfg.n - k * cfg.shard_size) for k in range(n_shards) if k not in existing)
    size_hist: Counter = Counter()
    objects_hist: Counter = Counter()
    dense_words, short_words, with_text = [], [], 0
    start = time.perf_counter()
    bar = tqdm(total=todo, desc="shapes", unit="img", disable=not progress)
    for k in range(n_shards):
        indices = range(k * cfg.shard_size, min(cfg.n, (k + 1) * cfg.shard_size))
        records = [make_sample(cfg, i, sizes, with_image=k not in existing)[1] for i in indices]
        if k not in existing:
            write_shard(shard_path(cfg.out, k), records)
            bar.update(len(records))
        for r in records:
            meta = r["json"]
            size_hist[f"{meta['width']}x{meta['height']}"] += 1
            objects_hist[len(meta["scene"]["objects"])] += 1
            with_text += meta["scene"]["sign"] is not None
            dense_words.append(len(meta["captions"]["dense"].split()))
            short_words.append(len(meta["captions"]["short"].split()))
    bar.close()
    summary = {
        "n": cfg.n, "shards": n_shards, "shards_written": n_shards - len(existing), "shards_skipped": len(existing),
        "seconds": round(time.perf_counter() - start, 2), "config": asdict(cfg),
        "sizes": dict(sorted(size_hist.items())), "objects_per_scene": dict(sorted(objects_hist.items())),
        "with_text": with_text, "dense_words": _stats(dense_words), "short_words": _stats(short_words),
    }
    atomic_write_json(f"{cfg.out}/{SUMMARY}", summary)
    return summary
