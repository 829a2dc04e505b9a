"""Steps 2, 6, 7 and 8: resolution, clarity, entropy and brightness (no model, a few ms per image).

- resolution: the shorter side in pixels of the original (after EXIF rotation); reject below
  `resolution.min_short_side` (384: the Lens threshold read as a shorter side).
- clarity: variance of the Laplacian of the greyscale image downscaled to a fixed shorter side
  (`clarity.size`), so the score does not grow or shrink with the original resolution; reject
  below `clarity.min_variance` (100, the common blur-detection rule of thumb at this scale).
- entropy: Shannon entropy in bits of the 256-bin grey-level histogram (0 for a flat image, at
  most 8); reject below `entropy.min_bits` (3: photographs score 6-7.8, flat fills and two-tone
  graphics below 2).
- brightness: mean perceived luminance (ITU-R BT.601 luma, 0..1); reject outside
  [`brightness.min_luma`, `brightness.max_luma`] (0.08, 0.94: nearly black or nearly blank white).
"""

from __future__ import annotations

import cv2
import numpy as np

from lensgen.data.curate.config import BrightnessConfig, ClarityConfig, EntropyConfig, ResolutionConfig
from lensgen.data.curate.steps.base import Item, Step


class ResolutionStep(Step):
    name, column = "resolution", "short_side"

    def __init__(self, config: ResolutionConfig):
        self.min_short_side = config.min_short_side

    def score(self, items: list[Item]) -> list[int]:
        return [min(item.width, item.height) for item in items]

    def rejects(self, value: float) -> bool:
        return value < self.min_short_side


def laplacian_variance(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_32F, ksize=1).var())


class ClarityStep(Step):
    name, column = "clarity", "laplacian_var"

    def __init__(self, config: ClarityConfig):
        self.size, self.min_variance = config.size, config.min_variance

    def score(self, items: list[Item]) -> list[float]:
        return [laplacian_variance(item.gray(self.size)) for item in items]

    def rejects(self, value: float) -> bool:
        return value < self.min_variance


def grey_entropy(gray: np.ndarray) -> float:
    hist = np.bincount(np.clip(gray, 0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


class EntropyStep(Step):
    name, column = "entropy", "entropy_bits"

    def __init__(self, config: EntropyConfig):
        self.min_bits = config.min_bits

    def score(self, items: list[Item]) -> list[float]:
        return [grey_entropy(item.gray()) for item in items]

    def rejects(self, value: float) -> bool:
        return value < self.min_bits


class BrightnessStep(Step):
    name, column = "brightness", "luma"

    def __init__(self, config: BrightnessConfig):
        self.min_luma, self.max_luma = config.min_luma, config.max_luma

    def score(self, items: list[Item]) -> list[float]:
        return [float(item.gray().mean() / 255.0) for item in items]

    def rejects(self, value: float) -> bool:
        return not (self.min_luma <= value <= self.max_luma)

