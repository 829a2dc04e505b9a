"""`lensgen train-vae`: a small FLUX.2-class VAE (diffusers' `AutoencoderKLFlux2`) trained on Shapes scenes.

Why: with the pixel codec the transformer must draw every edge inside 8x8-pixel, 192-value tokens, and on a
CPU budget it learnt blobs, not shapes (docs/training.md). A VAE of the class Lens itself uses moves the
sharp edges into a convolutional decoder and leaves the transformer 16-value tokens on the same 8-pixel grid.
The folder this writes is a `flux2-vae` codec (`model.codec: {backend: flux2-vae, path: ...}`): the same
code path as the real FLUX.2 VAE, only tiny (4x down, 4 latent channels, 2x2 patches: 8 px per token).

Training: L1 + MSE reconstruction plus a small KL term, scenes rendered on the fly at the Shapes buckets'
sizes (one bucket per batch), AdamW with warm-up and cosine decay. Checkpoints are atomic and `--resume`
continues exactly. At the end the BatchNorm running statistics, which the codec normalises tokens with, are
set to the exact per-channel mean and variance of the patchified latents of `stats_images` scenes, and the
reconstructions of held-out scenes are scored (PSNR, and whether the judge reads the same objects back).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from lensgen.config import Validated
from lensgen.data.buckets import BucketTable
from lensgen.errors import UserError
from lensgen.images import image_to_tensor
from lensgen.io import atomic_open, atomic_write_json
from lensgen.models.vae import Flux2VAECodec, flux2_spatial_factor, load_codec, patchify
from lensgen.shapes import generate_scene, render
from lensgen.train.checkpoint import truncate_metrics
from lensgen.train.trainer import lr_at

# The Shapes VAE: diffusers' AutoencoderKLFlux2, sized for tens of images per second of training on 2 cores.
# No attention in the mid block, so it is fully convolutional and works at every bucket size.
SHAPES_VAE: dict = {
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 64,
    "mid_block_add_attention": False,
    "patch_size": [2, 2],
}


# Settings that shape the training trajectory: a resumed run must keep them (steps may grow).
TRAJECTORY_FIELDS = ("batch_size", "lr", "warmup_steps", "min_lr_ratio", "kl_weight", "bases", "multiple", "seed",
                     "vae", "teacher", "decoder_channels", "decoder_init", "latent_model", "latent_prompts",
                     "latent_count", "latent_fraction")


@dataclass
class VAETrainConfig(Validated):
    out_dir: str = "runs/shapes-vae"
    steps: int = 1600
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay to lr * this at the last step
    kl_weight: float = 1e-4  # on the mean KL per latent element
    bases: list[int] = field(default_factory=lambda: [48, 64, 80])  # bucket classes, as data.bases
    multiple: int = 8
    seed: int = 0
    checkpoint_every: int = 100
    stats_images: int = 512  # scenes whose latents set the BatchNorm statistics
    eval_images: int = 128  # held-out scenes (64x64) for the reconstruction report
    threads: int = 0  # torch threads (0: torch's default)
    vae: dict = field(default_factory=lambda: dict(SHAPES_VAE))  # AutoencoderKLFlux2 kwargs
    # Set both to distil a lighter decoder for an existing VAE instead (lensgen.train.decoder_distill): its
    # codec folder, and the new decoder's channels per block (AutoencoderKLFlux2's decoder_block_out_channels).
    teacher: str = ""
    decoder_channels: list[int] = field(default_factory=list)
    decoder_init: str = ""  # a VAE folder distilled this way (same decoder_channels) whose decoder starts this one
    # Also with `teacher`: latents a model of the teacher's latent space samples (a pipeline name or folder, at
    # its defaults) for prompts from `latent_prompts` (a prompts file, e.g. `lensgen data rl-prompts`), so the
    # decoder learns the latents it will be given, not only the encoder's. `latent_count` are sampled once
    # (OUT/latent_pool.safetensors); `latent_fraction` of every batch is drawn from them.
    latent_model: str = ""
    latent_prompts: str = ""
    latent_count: int = 4096
    latent_fraction: float = 0.5
    schedule: ClassVar[str] = "cosine"  # warm-up then cosine, by the transformer trainer's `lr_at`

    def checks(self) -> list[tuple[bool, str, str]]:
        positive = ("steps", "batch_size", "checkpoint_every", "stats_images", "eval_images", "multiple")
        return [
            *((getattr(self, name) >= 1, name, "a positive integer") for name in positive),
            *((getattr(self, name) >= 0, name, "a number >= 0") for name in ("lr", "kl_weight", "min_lr_ratio")),
            (bool(self.bases) and all(b > 0 and b % self.multiple == 0 for b in self.bases), "bases",
             f"positive multiples of multiple ({self.multiple})"),
            (not self.teacher or (bool(self.decoder_channels) and all(c >= 1 for c in self.decoder_channels)),
             "decoder_channels", "the distilled decoder's channels per block, e.g. [16, 16, 32], with `teacher`"),
            (bool(self.teacher) or not (self.decoder_channels or self.decoder_init or self.latent_model), "teacher",
             "the codec folder whose decoder is distilled (decoder_channels, decoder_init or latent_model is set)"),
            (not self.latent_model or bool(self.latent_prompts), "latent_prompts",
             "a prompts file for latent_model to sample (one prompt a line, or JSONL with a \"prompt\" field)"),
            (self.latent_count >= 1, "latent_count", "a positive integer"),
            (0 <= self.latent_fraction <= 1, "latent_fraction", "a share of the batch in [0, 1]"),
        ]


def build_vae(kwargs: dict):
    from diffusers import AutoencoderKLFlux2

    try:
        return AutoencoderKLFlux2(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    except (TypeError, ValueError) as err:
        raise UserError(f"train-vae: bad AutoencoderKLFlux2 settings in `vae`: {err}") from None


def scene_batch(seeds: list[tuple[int, ...]], height: int, width: int, split: str = "train") -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1]: one rendered Shapes scene per seed."""
    return torch.stack([image_to_tensor(render(generate_scene(s, aspect=width / height, split=split), height, width))
                        for s in seeds])


def vae_loss(vae, images: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None):
    """(loss, parts): L1 + MSE of the reconstruction from a posterior sample, plus kl_weight * mean KL."""
    posterior = vae.encode(images).latent_dist
    z = posterior.sample(generator)
    recon = vae.decode(z).sample
    l1 = (recon - images).abs().mean()
    mse = (recon - images).pow(2).mean()
    kl = posterior.kl().mean() / z[0].numel()
    return l1 + mse + kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


class VAETrainer:
    def __init__(self, cfg: VAETrainConfig, resume: bool = False, progress: bool = True):
        cfg.validate()  # fields may have been changed since it was built
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.vae = self.build_vae()
        self.table = BucketTable(cfg.bases, cfg.multiple)
        factor = flux2_spatial_factor(self.vae.config)
        if cfg.multiple % factor:
            raise UserError(f"train-vae: multiple {cfg.multiple} is not a multiple of the VAE's {factor} px per token")
        self.optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=cfg.lr, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.ckpt = self.out / "checkpoint.pt"
        if resume and self.ckpt.is_file():
            state = torch.load(self.ckpt, weights_only=False)
            defaults = asdict(VAETrainConfig())  # for a field newer than the checkpoint
            changed = sorted(k for k in TRAJECTORY_FIELDS if state["config"].get(k, defaults[k]) != asdict(cfg)[k])
            if changed:
                raise UserError(f"{self.ckpt} was written with other settings than these ({', '.join(changed)}); "
                                "a resumed run may change only steps and the reporting settings")
            self.vae.load_state_dict(state["vae"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            self.step = state["step"]
        truncate_metrics(self.out / "metrics.jsonl", self.step)  # what a killed run logged after its checkpoint

    def build_vae(self):
        return build_vae(self.cfg.vae)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.vae.parameters())

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return vae_loss(self.vae, images, self.cfg.kl_weight, self.generator)

    def batch(self, step: int, count: int | None = None) -> torch.Tensor:
        """Step `step`'s scenes (`count` of them, batch_size by default), all at one bucket's size."""
        bucket = self.table[random.Random(f"vae-bucket-{self.cfg.seed}-{step}").randrange(len(self.table))]
        seeds = [(self.cfg.seed, 104729, step, i) for i in range(count or self.cfg.batch_size)]
        return scene_batch(seeds, bucket.height, bucket.width)

    def save_checkpoint(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.ckpt) as f:
            torch.save({"vae": self.vae.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "generator": self.generator.get_state(), "step": self.step, "config": asdict(self.cfg)}, f)

    def train(self) -> list[dict]:
        from tqdm import tqdm

        cfg, log = self.cfg, []
        self.out.mkdir(parents=True, exist_ok=True)
        self.vae.train()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train-vae", disable=not self.progress)
        t0 = time.perf_counter()
        with open(self.out / "metrics.jsonl", "a") as metrics:
            while self.step < cfg.steps:
                lr = lr_at(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, parts = self.loss(self.batch(self.step))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.step += 1
                record = {"step": self.step, "loss": loss.item(), **parts, "lr": lr}
                log.append(record)
                metrics.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", l1=f"{parts['l1']:.4f}")
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    metrics.flush()
                    self.save_checkpoint()
        bar.close()
        self.train_seconds = time.perf_counter() - t0
        return log

    @torch.no_grad()
    def set_latent_statistics(self) -> None:
        """BatchNorm running mean/var := the exact statistics of `stats_images` scenes' patchified latents
        (posterior mode, as the codec encodes), spread over every bucket."""
        self.vae.eval()
        p = self.vae.config.patch_size[0]
        total, total_sq, count = 0.0, 0.0, 0
        per_bucket = math.ceil(self.cfg.stats_images / len(self.table))
        for k, bucket in enumerate(self.table):
            seeds = [(self.cfg.seed, 130363, k, i) for i in range(per_bucket)]
            z = patchify(self.vae.encode(scene_batch(seeds, bucket.height, bucket.width)).latent_dist.mode(), p)
            z = z.double().transpose(0, 1).flatten(1)
            total = total + z.sum(1)
            total_sq = total_sq + (z * z).sum(1)
            count += z.shape[1]
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0)
        self.vae.bn.running_mean.copy_(mean.float())
        self.vae.bn.running_var.copy_(var.float())

    def prepare_export(self) -> None:
        self.set_latent_statistics()

    def report(self, codec) -> dict:
        """How good the exported `codec` is: the round trip of `eval_images` scenes."""
        return reconstruction_report(codec, self.cfg.eval_images, seed=self.cfg.seed)

    def export(self) -> Path:
        """Write OUT/final (a `flux2-vae` codec folder) atomically: a temp folder, then a rename."""
        self.prepare_export()
        final, tmp = self.out / "final", self.out / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        Flux2VAECodec(self.vae).save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final


def image_agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[list[float], int]:
    """Two batches of images in [-1, 1]: the PSNR of each pair (dB), and how many pairs the judge reads as the
    same (colour, shape) counts."""
    from lensgen.images import to_pil
    from lensgen.shapes.judge import detect

    mse = ((a - b) / 2).pow(2).flatten(1).mean(1)
    psnrs = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).tolist()
    return psnrs, sum(detect(x).counts() == detect(y).counts() for x, y in zip(to_pil(a), to_pil(b)))


@torch.no_grad()
def reconstruction_report(codec, n: int, seed: int = 0, size: int = 64) -> dict:
    """How faithful `codec` is on `n` Shapes scenes from the whole world (held-out ones included): PSNR of the
    round trip, and the share of images where the judge reads back the same (colour, shape) counts."""
    psnrs, same = [], 0
    for start in range(0, n, 16):
        seeds = [(seed, 15485863, i) for i in range(start, min(n, start + 16))]
        images = scene_batch(seeds, size, size, split="any")
        batch_psnrs, batch_same = image_agreement(images, codec.decode(codec.encode(images)))
        psnrs, same = psnrs + batch_psnrs, same + batch_same
    return {"images": n, "size": size, "psnr_db": float(np.mean(psnrs)), "judge_agreement": same / n}


def run(cfg: VAETrainConfig, resume: bool = False, progress: bool = True, trainer_class=None) -> dict:
    """Train, export OUT/final, report, write OUT/summary.json. `trainer_class`: VAETrainer (the default), or
    `decoder_distill.DecoderDistiller` for a config with `teacher` (`decoder_distill.run` passes it)."""
    trainer_class = trainer_class or VAETrainer
    if cfg.teacher and trainer_class is VAETrainer:
        raise UserError("train-vae: with `teacher` set the run distils a decoder: lensgen.train.decoder_distill.run")
    trainer = trainer_class(cfg, resume=resume, progress=progress)
    start = trainer.step
    log = trainer.train()
    final = trainer.export()
    report = trainer.report(load_codec(final))
    done = trainer.step - start
    summary = {"steps": trainer.step, "final": str(final), "reconstruction": report,
               "train_seconds": trainer.train_seconds,
               "images_per_s": done * cfg.batch_size / trainer.train_seconds if done else 0.0,
               "last_loss": float(np.mean([r["loss"] for r in log[-20:]])) if log else None,
               "config": asdict(cfg)}
    atomic_write_json(trainer.out / "summary.json", summary)
    return summary


__all__ = ["SHAPES_VAE", "VAETrainConfig", "VAETrainer", "build_vae", "image_agreement", "reconstruction_report", "run",
           "scene_batch", "vae_loss"]
