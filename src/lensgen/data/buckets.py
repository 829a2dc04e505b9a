"""The 27 training buckets (3 size classes x 9 aspect ratios) and how an image is fitted to one.

Lens trains on 512, 768 and 1024 px images in the nine aspect ratios of the published table
(1:2 .. 2:1). An image goes to the bucket whose aspect ratio is nearest in log space (so 1:2 and
2:1 are equally far from 1:1), then to the size class whose area for that ratio is nearest in log
area; it is then resized to cover the bucket and centre-cropped, so nothing is padded or stretched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lensgen.sizes import size_table

LENS_BASES: tuple[int, ...] = (512, 768, 1024)


@dataclass(frozen=True)
class Bucket:
    index: int  # class_index * ratios + ratio_index
    base: int  # the square size of its class (512, 768, 1024)
    height: int
    width: int

    @property
    def ratio(self) -> float:
        return self.width / self.height

    def tokens(self, patch: int = 16) -> int:
        """Image tokens at `patch` px per token (16 for the FLUX.2 VAE with 2x2 patches)."""
        return (self.height // patch) * (self.width // patch)


class BucketTable:
    """Buckets of every base size, from `lensgen.sizes.size_table(base, multiple)`."""

    def __init__(self, bases: Sequence[int] = LENS_BASES, multiple: int = 16):
        if not bases:
            raise ValueError("a bucket table needs at least one base size")
        self.bases = tuple(sorted(bases))
        self.multiple = multiple
        tables = [size_table(base, multiple) for base in self.bases]
        self.num_ratios = len(tables[0])
        self.buckets = [
            Bucket(c * self.num_ratios + r, base, h, w)
            for c, (base, table) in enumerate(zip(self.bases, tables))
            for r, (h, w) in enumerate(table)
        ]
        # Ratio slots are the largest class's ratios (least affected by rounding to `multiple`).
        self._log_ratios = [math.log(w / h) for h, w in tables[-1]]

    def __len__(self) -> int:
        return len(self.buckets)

    def __iter__(self):
        return iter(self.buckets)

    def __getitem__(self, index: int) -> Bucket:
        return self.buckets[index]

    def sizes(self) -> dict[tuple[int, int], int]:
        """(height, width) -> the index of the bucket of exactly that size (the first, where two coincide)."""
        found: dict[tuple[int, int], int] = {}
        for b in self.buckets:
            found.setdefault((b.height, b.width), b.index)
        return found

    def nearest(self, height: int, width: int) -> Bucket:
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width} (HxW)")
        log_ratio = math.log(width / height)
        r = min(range(self.num_ratios), key=lambda i: (abs(self._log_ratios[i] - log_ratio), i))
        log_area = math.log(height * width)
        candidates = [self.buckets[c * self.num_ratios + r] for c in range(len(self.bases))]
        return min(candidates, key=lambda b: (abs(math.log(b.height * b.width) - log_area), b.index))


    def nearest_indices(self, heights, widths) -> np.ndarray:
        """`nearest(h, w).index` for arrays of sizes at once (same rule and tie-breaks)."""
        h = np.asarray(heights, np.float64)
        w = np.asarray(widths, np.float64)
        if h.size and (h.min() <= 0 or w.min() <= 0):
            raise ValueError("image sizes must be positive")
        ratios = np.asarray(self._log_ratios)
        r = np.argmin(np.abs(np.log(w / h)[:, None] - ratios[None, :]), axis=1)
        areas = np.log(np.asarray([[b.height * b.width for b in self.buckets[c * self.num_ratios:][:self.num_ratios]]
                                   for c in range(len(self.bases))], np.float64))  # (classes, ratios)
        c = np.argmin(np.abs(areas[:, r].T - np.log(h * w)[:, None]), axis=1)
        return c * self.num_ratios + r


_DEFAULT_TABLE: BucketTable | None = None


def nearest_bucket(height: int, width: int, table: BucketTable | None = None) -> Bucket:
    """The bucket of an image of `height` x `width` px (Lens's 27 buckets unless `table` is given)."""
    global _DEFAULT_TABLE
    if table is None:
        if _DEFAULT_TABLE is None:
            _DEFAULT_TABLE = BucketTable()
        table = _DEFAULT_TABLE
    return table.nearest(height, width)


def resize_and_center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale `image` to cover (height, width) keeping its aspect ratio, then crop the centre."""
    height, width = size
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {height}x{width} (HxW)")
    scale = max(height / image.height, width / image.width)
    new_w = max(width, round(image.width * scale))
    new_h = max(height, round(image.height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return resized.crop((left, top, left + width, top + height))
