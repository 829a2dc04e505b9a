"""What every cleaning step shares: the item it scores and the step interface.

A step scores a batch of items (those that survived the steps before it, in the Lens order), and
its `rejects(score)` rule turns a score into a verdict. Scores are recorded in the manifest whether
or not they reject, so a threshold can be re-tuned later from the manifest alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from lensgen.data.curate.inputs import Sample


@dataclass
class Item:
    """One input on its way through the steps: the sample, its decoded working copy and its scores."""

    sample: Sample
    image: Image.Image | None = None  # RGB working copy, shorter side <= run.work_size
    width: int | None = None  # of the original, after EXIF rotation
    height: int | None = None
    format: str | None = None
    needs_reencode: bool = False
    sha256: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    rejected_by: str | None = None
    embedding: np.ndarray | None = None  # the near-duplicate embedding
    cache: dict[str, Any] = field(default_factory=dict)  # per-item intermediates shared by steps

    def gray(self, short_side: int | None = None) -> np.ndarray:
        """The greyscale working copy (float32, 0..255), optionally resized to a fixed shorter side."""
        key = f"gray{short_side}"
        if key not in self.cache:
            image = self.image
            if short_side is not None and min(image.size) != short_side:
                scale = short_side / min(image.size)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            self.cache[key] = np.asarray(image.convert("L"), dtype=np.float32)
        return self.cache[key]


class Step:
    """A scoring step. Subclasses set `name`, `column`, and implement `score` and `rejects`."""

    name: ClassVar[str]
    column: ClassVar[str]  # the manifest column of its score

    def score(self, items: list[Item]) -> list[float]:
        raise NotImplementedError

    def rejects(self, value: float) -> bool:
        raise NotImplementedError

    def apply(self, items: list[Item]) -> list[Item]:
        """Score the items, mark rejections, return the survivors."""
        if not items:
            return items
        values = self.score(items)
        survivors = []
        for item, value in zip(items, values):
            item.scores[self.column] = value
            if self.rejects(value):
                item.rejected_by = self.name
            else:
                survivors.append(item)
        return survivors
