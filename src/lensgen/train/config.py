"""Typed training configuration: the sections of a `lensgen train` YAML file.

Read by the one config loader (`lensgen.config.load_config`): a bad field fails at load time naming
the file and the field (`c.yaml: optim.lr: expected a positive number`), so a cluster job never dies an
hour in on a typo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensgen.config import Override, Validated
from lensgen.config import load_config as load_typed_config
from lensgen.models.weight_storage import STORAGES


@dataclass
class ModelConfig:
    preset: str = "shapes-tiny"  # transformer preset (lensgen.models.transformer.PRESETS)
    overrides: dict = field(default_factory=dict)  # LensTransformerConfig fields to change
    text_encoder: dict = field(default_factory=lambda: {"backend": "minilm"})  # blocks 1-4, up to 256 tokens
    # the latent codec; a flux2-vae without `path` is the Shapes VAE shipped in the package
    codec: dict = field(default_factory=lambda: {"backend": "flux2-vae"})
    init_from: str | None = None  # a pipeline folder whose transformer weights start the run
    guidance: float = 5.0  # CFG scale the exported pipeline samples with by default (and validation images)


@dataclass
class DataConfig:
    # "shapes": procedural scenes rendered on the fly; "shards": WebDataset tars indexed in memory;
    # "stream": WebDataset tars read in order through a shuffle buffer (any size: Lens's 800M images)
    source: str = "shapes"
    shards: str | None = None  # folder of .tar shards (source: shards or stream)
    shuffle_buffer: int = 1000  # samples held for shuffling (source: stream)
    num_items: int = 200_000  # items per epoch for the procedural source
    caption: str = "mixed"  # dense | short | mixed
    dense_prob: float = 0.7  # with caption: mixed, probability of the dense caption
    caption_mix: str = "sample"  # mixed captions drawn per sample, or per batch (short batches stay short: cheaper)
    bases: list[int] = field(default_factory=lambda: [48, 64, 80])  # 3 size classes x 9 ratios = 27 buckets
    multiple: int = 8  # bucket sides are multiples of this (the codec's pixels per token)
    sampler: str = "mixed"  # mixed (any buckets per batch) | class (one size class) | grouped (one bucket)
    text_cache: str | None = None  # None: encode every step; "": cache in memory; a folder: also on disk


@dataclass
class OptimConfig:
    steps: int = 1000
    batch_size: int = 32  # per rank, per micro-step
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_steps: int = 100
    schedule: str = "constant"  # constant | cosine (after warm-up)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # empty-prompt rate, so CFG works
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigma_shift: Any = "flux2"  # "flux2" | "none" | a number (mu)
    seed: int = 0


@dataclass
class SystemConfig:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile per block
    fsdp: bool | str = "auto"  # auto (when launched with torchrun and world > 1) | true | false
    threads: int | None = None  # CPU threads per process
    prefetch: bool | str = "auto"  # prepare the next batch in a background thread: auto (on CUDA) | true | false
    # a device's peak dense bf16 TFLOP/s (a number, or a100 | h100 | h800 | h200): logs MFU beside the model
    # FLOPs of each step (lensgen.compute); None logs FLOPs and TFLOP/s per GPU only
    peak_tflops: float | str | None = None
    # shard the frozen text encoder with FSDP2 (bf16 on GPUs): false (a full copy per rank) | node (within
    # each node, replicated across nodes) | all (across every rank); see docs/scaling.md
    text_encoder_fsdp: bool | str = False


@dataclass
class LogConfig:
    every: int = 10
    val_every: int = 100  # loss at fixed sigmas on a fixed validation batch
    val_images_every: int = 500  # validation images at fixed seeds (0 = never)
    val_prompts: list[str] = field(default_factory=lambda: ["a red circle", "two blue squares",
                                                            "a yellow star to the left of a green triangle"])
    tensorboard: bool = True


@dataclass
class CheckpointConfig:
    every: int = 500
    keep: int = 2
    export_storage: str = "fp32"  # weights of the exported pipeline: fp32 | bf16 | int8 (per-row scales) | int4


@dataclass
class TrainConfig(Validated):
    out_dir: str = "runs/shapes-tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.model.guidance >= 1, "model.guidance", "a CFG scale >= 1 (1 = no guidance pass)"),
            (self.data.source in ("shapes", "shards", "stream"), "data.source", "'shapes', 'shards' or 'stream'"),
            (self.data.source == "shapes" or bool(self.data.shards), "data.shards",
             "a folder when source is shards or stream"),
            (self.data.shuffle_buffer >= 0, "data.shuffle_buffer", "a count >= 0"),
            (self.data.caption in ("dense", "short", "mixed"), "data.caption", "dense, short or mixed"),
            (0 <= self.data.dense_prob <= 1, "data.dense_prob", "a probability in [0, 1]"),
            (self.data.caption_mix in ("sample", "batch"), "data.caption_mix", "sample or batch"),
            (len(self.data.bases) > 0 and all(b > 0 for b in self.data.bases), "data.bases", "positive sizes"),
            (self.data.sampler in ("mixed", "class", "grouped"), "data.sampler", "mixed, class or grouped"),
            (self.optim.steps > 0, "optim.steps", "a positive integer"),
            (self.optim.batch_size > 0, "optim.batch_size", "a positive integer"),
            (self.optim.grad_accum > 0, "optim.grad_accum", "a positive integer"),
            (self.optim.lr > 0, "optim.lr", "a positive number"),
            (self.optim.schedule in ("constant", "cosine"), "optim.schedule", "constant or cosine"),
            (0 <= self.optim.caption_dropout < 1, "optim.caption_dropout", "a rate in [0, 1)"),
            (0 <= self.optim.ema_decay < 1, "optim.ema_decay", "a decay in [0, 1)"),
            (len(self.optim.betas) == 2, "optim.betas", "two numbers"),
            (self.optim.sigma_shift in ("flux2", "none") or isinstance(self.optim.sigma_shift, int | float),
             "optim.sigma_shift", "'flux2', 'none' or a number"),
            (self.system.device in ("auto", "cpu", "cuda"), "system.device", "auto, cpu or cuda"),
            (self.system.precision in ("auto", "fp32", "bf16"), "system.precision", "auto, fp32 or bf16"),
            (self.system.fsdp in ("auto", True, False), "system.fsdp", "auto, true or false"),
            (self.system.prefetch in ("auto", True, False), "system.prefetch", "auto, true or false"),
            (self.system.text_encoder_fsdp in (False, "node", "all"), "system.text_encoder_fsdp",
             "false, node or all"),
            # a sharded encoder's forward is a collective: no rank may skip one, nor run one alone
            (not self.system.text_encoder_fsdp or self.data.text_cache is None, "data.text_cache",
             "null with system.text_encoder_fsdp (cache hits differ between ranks)"),
            (not self.system.text_encoder_fsdp or self.log.val_images_every == 0, "log.val_images_every",
             "0 with system.text_encoder_fsdp (validation images are sampled on rank 0 alone)"),
            (not self.system.text_encoder_fsdp or self.system.prefetch is False, "system.prefetch",
             "false with system.text_encoder_fsdp (its collectives must keep the main thread's order)"),
            (_valid_peak(self.system.peak_tflops), "system.peak_tflops",
             "a positive TFLOP/s number or a device name (a100, h100, h800, h200)"),
            (self.checkpoint.every > 0, "checkpoint.every", "a positive integer"),
            (self.checkpoint.keep > 0, "checkpoint.keep", "a positive integer"),
            (self.checkpoint.export_storage in STORAGES, "checkpoint.export_storage",
             ", ".join(STORAGES)),
        ]


def _valid_peak(value) -> bool:
    from lensgen.compute import device_peak_tflops
    from lensgen.errors import UserError

    if value is None:
        return True
    try:
        device_peak_tflops(value)
    except UserError:
        return False
    return True


def load_config(path: str | Path, overrides: Iterable[Override] = ()) -> TrainConfig:
    """A `lensgen train` config file with `--set` overrides (`section.field=value`) applied."""
    return load_typed_config(TrainConfig, path, overrides)


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
