"""The `lensgen distill` config: one typed tree, loaded from YAML with `--set` overrides (lensgen.config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from lensgen.config import Validated, load_config
from lensgen.data.sources import SOURCES
from lensgen.models.weight_storage import STORAGES


@dataclass
class DistillModelConfig:
    teacher: str = "src/lensgen/assets/shapes-tiny"  # the pipeline folder distilled (the student starts as a copy)
    teacher_cfg: float = 0.0  # the real score's CFG scale; 0: the teacher's own default
    teacher_steps: int = 0  # the teacher's sampling steps the benchmark compares with; 0: its default
    # A codec folder the student is exported with instead of the teacher's: a lighter decoder distilled for the
    # teacher's VAE (`lensgen train-vae --set teacher=...`). It must encode exactly as the teacher's codec does.
    codec: str = ""


@dataclass
class DistillDataConfig:
    source: str = "shapes"  # shapes (rendered on the fly) | shards | stream: prompts, and real images for the GAN
    shards: str | None = None
    num_items: int = 200_000
    shuffle_buffer: int = 1000
    caption: str = "short"  # dense | short | mixed: the prompts the student learns to answer
    dense_prob: float = 0.5
    bases: list[int] = field(default_factory=lambda: [48, 64, 80])
    multiple: int = 8
    batch_size: int = 8  # per rank


@dataclass
class TurboConfig:
    steps: int = 4  # the student's sampling steps (CFG-free)
    backward_simulation: bool = True  # the student's own earlier steps make its inputs (else: noised real images)


@dataclass
class DistillLossConfig:
    dm_weight: float = 1.0  # decoupled DMD: distribution matching (real cond vs fake), the regulariser
    ca_weight: float = 1.0  # decoupled DMD: CFG augmentation (teacher guided vs cond), the engine
    dm_sigma: list[float] = field(default_factory=lambda: [0.02, 0.98])  # re-noise range of the DM term
    ca_sigma: list[float] = field(default_factory=lambda: [0.02, 0.98])  # ... of the CA term (equal: DMD2)
    fake_updates: int = 5  # two-time-scale rule: fake-score (and discriminator) updates per student update
    ida_lambda: float = 1.0  # SenseFlow's implicit alignment fake <- l fake + (1 - l) student; 1 = off (0.97)
    isg_weight: float = 0.0  # SenseFlow's intra-segment guidance (0 = off; SenseFlow: 0.5)
    gan_weight: float = 0.0  # the student's non-saturating GAN term (0 = off; no discriminator is trained)
    r1_weight: float = 1.0  # approximate R1 on real images, lambda |D(x) - D(x + s eps)|^2
    r1_noise: float = 0.01
    disc_block: int = -1  # the fake score's block whose image tokens feed the discriminator head


@dataclass
class DistillOptimConfig:
    steps: int = 1000  # student updates
    lr: float = 1e-5
    fake_lr: float = 1e-5
    disc_lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])  # DMD2: no first moment
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    seed: int = 0


@dataclass
class DistillSystemConfig:
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    activation_checkpointing: bool = False
    compile: bool = False
    fsdp: bool | str = "auto"
    threads: int | None = None


@dataclass
class DistillLogConfig:
    every: int = 1
    tensorboard: bool = True


@dataclass
class DistillCheckpointConfig:
    every: int = 50
    keep: int = 2
    export_storage: str = "fp32"  # fp32 | bf16 | int8 | int4 (models/weight_storage.py)


@dataclass
class DistillConfig(Validated):
    out_dir: str = "runs/distill-shapes"
    model: DistillModelConfig = field(default_factory=DistillModelConfig)
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    turbo: TurboConfig = field(default_factory=TurboConfig)
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    optim: DistillOptimConfig = field(default_factory=DistillOptimConfig)
    system: DistillSystemConfig = field(default_factory=DistillSystemConfig)
    log: DistillLogConfig = field(default_factory=DistillLogConfig)
    checkpoint: DistillCheckpointConfig = field(default_factory=DistillCheckpointConfig)

    def checks(self) -> list[tuple[bool, str, str]]:
        d, loss, o = self.data, self.loss, self.optim

        def sigma_range(r: list[float]) -> bool:
            return len(r) == 2 and 0 < r[0] <= r[1] <= 1

        return [
            (self.model.teacher_cfg >= 0, "model.teacher_cfg", "0 (the teacher's default) or a scale >= 1"),
            (d.source in SOURCES, "data.source", " or ".join(SOURCES)),
            (d.source == "shapes" or bool(d.shards), "data.shards", "a shard folder for source shards/stream"),
            (d.caption in ("dense", "short", "mixed"), "data.caption", "dense, short or mixed"),
            (d.batch_size >= 1, "data.batch_size", "a positive integer"),
            (bool(d.bases) and all(b > 0 for b in d.bases), "data.bases", "positive sizes"),
            (self.turbo.steps >= 1, "turbo.steps", "a positive integer"),
            (min(loss.dm_weight, loss.ca_weight, loss.isg_weight, loss.gan_weight, loss.r1_weight) >= 0,
             "loss", "weights >= 0"),
            (loss.dm_weight + loss.ca_weight + loss.isg_weight + loss.gan_weight > 0, "loss",
             "at least one of dm_weight, ca_weight, isg_weight, gan_weight above 0"),
            (sigma_range(loss.dm_sigma), "loss.dm_sigma", "[low, high] with 0 < low <= high <= 1"),
            (sigma_range(loss.ca_sigma), "loss.ca_sigma", "[low, high] with 0 < low <= high <= 1"),
            (loss.fake_updates >= 1, "loss.fake_updates", "a positive integer"),
            (0 <= loss.ida_lambda <= 1, "loss.ida_lambda", "a weight in [0, 1] (1 = off)"),
            (o.steps >= 1, "optim.steps", "a positive integer"),
            (min(o.lr, o.fake_lr, o.disc_lr) > 0, "optim.lr", "positive learning rates (lr, fake_lr, disc_lr)"),
            (len(o.betas) == 2, "optim.betas", "two numbers"),
            (0 <= o.ema_decay < 1, "optim.ema_decay", "a decay in [0, 1)"),
            (self.system.device in ("auto", "cpu", "cuda"), "system.device", "auto, cpu or cuda"),
            (self.system.precision in ("auto", "fp32", "bf16"), "system.precision", "auto, fp32 or bf16"),
            (self.system.fsdp in ("auto", True, False), "system.fsdp", "auto, true or false"),
            (self.checkpoint.every >= 1, "checkpoint.every", "a positive integer"),
            (self.checkpoint.export_storage in STORAGES, "checkpoint.export_storage",
             ", ".join(STORAGES)),
        ]


def load_distill_config(path: str | Path | None = None, overrides=()) -> DistillConfig:
    return load_config(DistillConfig, path, overrides)


def distill_config_to_dict(config: DistillConfig) -> dict:
    return asdict(config)


__all__ = ["DistillConfig", "distill_config_to_dict", "load_distill_config"]
