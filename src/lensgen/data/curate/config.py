"""Typed configuration of a curation run, read from YAML with errors that name the field.

Every threshold has a default taken from practice (see docs/data.md for the why of each). Fields
under `run` change how the work is scheduled, never the result, so they are left out of the
fingerprint that guards a resumed run against a changed config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lensgen.config import Override, Validated
from lensgen.config import load_config as load_typed_config

NUDENET_EXPOSED = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class InputConfig:
    format: Literal["auto", "folder", "list", "shards"] = "auto"
    source_tag: str = "real"  # "real" or "synthetic"; a shard sample's own json can override it
    extensions: list[str] = field(
        default_factory=lambda: ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
    )


@dataclass
class RunConfig:
    executor: Literal["local", "ray"] = "local"
    workers: int = 0  # 0: one per CPU core
    threads_per_worker: int = 1  # torch / onnxruntime threads; 1 keeps scores bit-identical across executors
    shard_size: int = 1000  # images per work unit = per output shard
    batch_size: int = 32
    work_size: int = 384  # decoded images are downscaled to this shorter side before scoring
    ray_address: str | None = None  # None: start a local Ray; "auto": join the cluster
    progress: bool = True


@dataclass
class CorruptConfig:
    max_pixels: int = 178_956_970  # Pillow's own hard limit (2x its warning level)
    reject_wrong_extension: bool = False  # a PNG named .jpg decodes fine; reject it anyway?


@dataclass
class ResolutionConfig:
    enabled: bool = True
    min_short_side: int = 384


@dataclass
class NsfwConfig:
    enabled: bool = True
    required: bool = False
    model_path: str | None = None  # None: the 320n.onnx that ships inside the nudenet package
    threshold: float = 0.5  # reject when an exposed-class detection reaches this confidence
    classes: list[str] = field(default_factory=lambda: list(NUDENET_EXPOSED))


@dataclass
class AestheticConfig:
    enabled: bool = True
    required: bool = False
    head_path: str | None = None  # LAION aesthetic predictor (.pth / .safetensors state dict)
    min_score: float = 3.0


@dataclass
class WatermarkConfig:
    enabled: bool = True
    required: bool = False
    model_path: str | None = None  # transformers image-classification folder, or a .onnx file
    threshold: float = 0.8  # reject when P(watermark) > threshold
    positive_label: str | None = None  # transformers: the watermark label (default: found by name)
    positive_index: int = 0  # ONNX: the watermark class (0 for LAION's watermark_model_v1)
    input_size: list[int] = field(default_factory=lambda: [256, 256])  # ONNX: (height, width)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    outputs: Literal["logits", "probs"] = "logits"


@dataclass
class ClarityConfig:
    enabled: bool = True
    size: int = 384  # shorter side of the fixed-size greyscale downscale
    min_variance: float = 100.0


@dataclass
class EntropyConfig:
    enabled: bool = True
    min_bits: float = 3.0


@dataclass
class BrightnessConfig:
    enabled: bool = True
    min_luma: float = 0.08
    max_luma: float = 0.94


@dataclass
class DedupConfig:
    enabled: bool = True
    embedder: Literal["auto", "clip", "thumbnail"] = "auto"  # auto: clip when clip_path is set
    threshold: float = 0.985
    thumbnail_size: int = 16
    report_min: float = 0.9  # the score (nearest similarity) is recorded when at least this, else null
    exact_max: int = 50_000  # above this many images, SemDeDup: k-means, then dedup within clusters
    cluster_size: int = 10_000
    kmeans_iters: int = 20
    seed: int = 0


@dataclass
class CurateConfig(Validated):
    clip_path: str | None = None  # CLIP ViT-L/14 folder (transformers); aesthetic head and dedup use it
    input: InputConfig = field(default_factory=InputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    corrupt: CorruptConfig = field(default_factory=CorruptConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    nsfw: NsfwConfig = field(default_factory=NsfwConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    watermark: WatermarkConfig = field(default_factory=WatermarkConfig)
    clarity: ClarityConfig = field(default_factory=ClarityConfig)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    brightness: BrightnessConfig = field(default_factory=BrightnessConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.run.workers >= 0, "run.workers", ">= 0 (0: one per core)"),
            (self.run.threads_per_worker >= 1, "run.threads_per_worker", ">= 1"),
            (self.run.shard_size >= 1, "run.shard_size", ">= 1"),
            (self.run.batch_size >= 1, "run.batch_size", ">= 1"),
            (self.run.work_size >= 16, "run.work_size", ">= 16"),
            (self.corrupt.max_pixels > 0, "corrupt.max_pixels", "a positive count"),
            (self.resolution.min_short_side >= 0, "resolution.min_short_side", ">= 0"),
            (self.clarity.size >= 16, "clarity.size", ">= 16"),
            (0.0 <= self.brightness.min_luma < self.brightness.max_luma <= 1.0, "brightness",
             "0 <= min_luma < max_luma <= 1"),
            (-1.0 <= self.dedup.threshold <= 1.0, "dedup.threshold", "a cosine similarity in [-1, 1]"),
            (self.dedup.thumbnail_size >= 4, "dedup.thumbnail_size", ">= 4"),
            (len(self.watermark.input_size) == 2, "watermark.input_size", "[height, width]"),
            (len(self.watermark.mean) == 3 and len(self.watermark.std) == 3, "watermark.mean/std",
             "3 values each (RGB)"),
            (self.input.source_tag in ("real", "synthetic"), "input.source_tag", "'real' or 'synthetic'"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of every field that can change a result (everything but `run`'s scheduling knobs)."""
        data = self.to_dict()
        data["run"] = {k: data["run"][k] for k in ("shard_size", "batch_size", "work_size")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None = None,
                overrides: Iterable[Override] | Mapping[str, Any] = ()) -> CurateConfig:
    """A `lensgen data curate` config (defaults when `path` is None) with overrides applied: `--set`
    strings, or a mapping of sections ({"run": {"workers": 2}})."""
    return load_typed_config(CurateConfig, path, overrides)
