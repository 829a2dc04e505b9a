"""`lensgen distill`: a 4-step CFG-free student (Lens-Turbo) from a teacher pipeline, CPU or torchrun + FSDP2.

Three transformers: the frozen teacher (the real score, guided with CFG), the student (starts as the
teacher, samples on a fixed `turbo.steps` Euler grid) and the fake score (starts as the teacher, learns
the student's distribution online by flow matching). A discriminator head reads the fake score's image
tokens at one block. One step:

1. a batch of prompts (and their real images, for the GAN) from the data source, all one size; for a teacher with
   a sign layout input, each quoting prompt's planned sign, given to every pass as the pipeline gives it;
2. backward simulation: from noise the student runs k of its own steps (k random, no gradient), so its
   input at step k is exactly what inference gives it; its velocity there makes the clean estimate x0;
3. the student's losses on x0: decoupled DMD (distribution matching + CFG augmentation, each re-noised
   at its own levels; equal weights and ranges are DMD2), SenseFlow's intra-segment guidance on its jump,
   the generator's GAN term; one optimiser step, the EMA, then SenseFlow's alignment of the fake score;
4. `loss.fake_updates` updates of the fake score (flow matching on the detached x0) and the discriminator
   (real vs student images, approximate R1): the two-time-scale rule.

Every random draw comes from generators seeded by (seed, step, rank), so a resumed run repeats the
losses exactly. The export is the student's EMA as a pipeline folder whose defaults are the turbo preset.
"""

from __future__ import annotations

import copy
import json
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lensgen.data.buckets import BucketTable
from lensgen.data.sources import build_batch_source, pick_caption
from lensgen.distill import losses as L
from lensgen.distill.config import DistillConfig, distill_config_to_dict
from lensgen.distill.discriminator import DiscriminatorHead, FeatureTap
from lensgen.flow.sampler import guided_velocity
from lensgen.flow.schedule import sampling_sigmas
from lensgen.inference.pipeline import LensPipeline, PipelineDefaults, StartingPoint
from lensgen.io import atomic_write_json
from lensgen.models.text_encoder import TextFeatures
from lensgen.models.transformer import LensTransformer2DModel
from lensgen.models.vae import check_same_latents, load_codec
from lensgen.shapes.sign_layout import planned_layouts
from lensgen.train import checkpoint as ckpt
from lensgen.train.batch import collate
from lensgen.train.ema import EMA
from lensgen.train.parallel import apply_fsdp, full_tensor
from lensgen.train.trainer import parallelize, start_run, tensorboard_writer


class DistillModels(nn.Module):
    """The trained modules in one tree, so one optimiser (a param group each) and one checkpoint hold them."""

    def __init__(self, student: LensTransformer2DModel, fake: LensTransformer2DModel, head: DiscriminatorHead):
        super().__init__()
        self.student, self.fake, self.head = student, fake, head


def _zero_missing_grads(params) -> None:
    """A zero gradient where none came (the last block's text MLP feeds nothing; the discriminator when the GAN is
    off): the parameter stays put (zero Adam moments), and every parameter of the module stepped has optimiser
    state, which the checkpoint's optimiser state dict needs to resume."""
    for p in params:
        if p.grad is None and p.requires_grad:
            p.grad = torch.zeros_like(p)


def _seed(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * 1_000_003 + int(p)) % (2**63 - 1)
    return value


class TurboTrainer:
    """One distillation run, built from the config, then `run()`."""

    def __init__(self, config: DistillConfig, resume: bool = False, progress: bool = True):
        self.cfg = config
        self.info, self.out, self.progress, self.bf16 = start_run(config.system, config.out_dir, config.optim.seed,
                                                                  progress)
        self.device = self.info.device
        cuda = self.device.type == "cuda"

        frozen_dtype = torch.bfloat16 if self.bf16 else torch.float32
        start = StartingPoint.load(config.model.teacher, self.device, frozen_dtype)
        self.teacher_defaults, self.teacher_name = start.defaults, start.name
        self.cfg_scale = config.model.teacher_cfg or self.teacher_defaults.cfg
        self.text_encoder, self.codec, student = start.text_encoder, start.codec, start.transformer
        if config.model.codec:
            codec = load_codec(config.model.codec, device=self.device)
            check_same_latents(codec, start.codec, f"model.codec ({config.model.codec})")
            self.codec = codec
        fake = copy.deepcopy(student)
        self.teacher = copy.deepcopy(student).requires_grad_(False).eval()
        head = DiscriminatorHead(student.config.width).to(self.device)
        self.tap = FeatureTap(fake, config.loss.disc_block)
        use_fsdp = parallelize(student, config.system, self.info, self.bf16)
        parallelize(fake, config.system, self.info, self.bf16)
        if use_fsdp:
            from torch.distributed.fsdp import fully_shard

            apply_fsdp(self.teacher, torch.bfloat16 if self.bf16 else None)
            fully_shard(head)
        self.models = DistillModels(student, fake, head)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 and not use_fsdp \
            else nullcontext()
        self.ema = EMA(student, config.optim.ema_decay)
        o = config.optim
        self.optimizer = torch.optim.AdamW(
            [{"params": list(student.parameters()), "lr": o.lr},
             {"params": list(fake.parameters()), "lr": o.fake_lr},
             {"params": list(head.parameters()), "lr": o.disc_lr}],
            betas=tuple(o.betas), weight_decay=o.weight_decay, fused=cuda or None)

        d = config.data
        self.table = BucketTable(bases=tuple(d.bases), multiple=d.multiple)
        self.source = build_batch_source(d.source, self.table, d.batch_size, self.codec.spatial_factor, seed=o.seed,
                                         rank=self.info.rank, world_size=self.info.world_size, mode="grouped",
                                         shards=d.shards, num_items=d.num_items, shuffle_buffer=d.shuffle_buffer)
        self.step = 0
        self.ckpt_root = self.out / "checkpoints"
        if resume:
            self._resume()
        self.batches = iter(self.source)
        self.writer = tensorboard_writer(self.out, self.info, config.log.tensorboard)

    @property
    def student(self) -> LensTransformer2DModel:
        return self.models.student

    @property
    def fake(self) -> LensTransformer2DModel:
        return self.models.fake

    def _resume(self) -> None:
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if latest is None:
            return
        meta = ckpt.load_checkpoint(latest, self.models, self.optimizer, self.ema, self.info)
        self.step = meta["step"]
        self.source.load_state_dict(meta["source"])
        if self.info.is_main:
            print(f"resumed from {latest} at step {self.step}")
            ckpt.truncate_metrics(self.out / "metrics.jsonl", self.step)

    # ---- pieces of a step ---------------------------------------------------------------------------

    def _batch(self, gen: torch.Generator):
        """This step's prompts, real clean tokens (B, N, C), token grid and text features (cond, uncond)."""
        keys = next(self.batches)
        rng = random.Random(_seed(self.cfg.optim.seed, self.step, self.info.rank, 7))
        images, prompts = [], []
        for key in keys:
            image, captions = self.source.load(key)
            images.append(image)
            prompts.append(pick_caption(captions, self.cfg.data.caption, self.cfg.data.dense_prob, rng))
        real = collate(images, prompts, self.codec)
        grid = real.sizes[0]
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        both = TextFeatures.cat([self.text_encoder.encode(prompts), self.text_encoder.encode([""] * len(prompts))])
        feats, mask = both.features.to(self.device, dtype), both.mask.to(self.device)
        n = len(prompts)
        layout = self._layouts(prompts, grid, dtype)  # the unconditional pass sees it too, as at sampling
        text = ((feats[:n], mask[:n], layout), (feats[n:], mask[n:], layout))  # (cond, uncond), one length
        return real.tokens.to(self.device).float(), grid, text

    def _layouts(self, prompts: list[str], grid, dtype: torch.dtype) -> torch.Tensor | None:
        """The planned signs of the prompts that quote a word (`shapes.sign_layout`) for a teacher with a layout
        input, as the pipeline plans them at sampling; seeded by (seed, step, rank, item)."""
        if not self.teacher.config.layout_channels:
            return None
        f = self.codec.spatial_factor
        seeds = [_seed(self.cfg.optim.seed, self.step, self.info.rank, i) % 2**31 for i in range(len(prompts))]
        layouts = planned_layouts(prompts, seeds, grid[0] * f, grid[1] * f, f)
        return None if layouts is None else torch.from_numpy(layouts).to(self.device, dtype)  # the features' dtype

    @staticmethod
    def _without_layout(text):
        """The GAN's conditioning: the prompt alone. Its real images' signs are not where a plan puts them, so a
        discriminator shown the layout could tell a sign drawn in place from a real one."""
        return (text[0], text[1], None)

    def _velocity(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, grid, text) -> torch.Tensor:
        feats, mask, layout = text
        with self.autocast:
            return model(x, feats, sigma.to(self.device, torch.float32), grid, mask, layout=layout).float()

    @torch.no_grad()
    def _teacher(self, x: torch.Tensor, sigma: torch.Tensor, grid, text) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's (conditional, guided) velocities; one batched pass over [cond; uncond], or the conditional
        pass alone for a teacher used without guidance (CFG 1: an RL model that samples CFG-free)."""
        cond, uncond = text
        if self.cfg_scale == 1.0:
            v_cond = self._velocity(self.teacher, x, sigma, grid, cond)
            return v_cond, v_cond
        both = self._velocity(self.teacher, torch.cat([x, x]), torch.cat([sigma, sigma]), grid,
                              tuple(None if a is None else torch.cat([a, b]) for a, b in zip(cond, uncond)))
        v_cond, v_uncond = both.chunk(2)
        return v_cond, guided_velocity(v_cond, v_uncond, self.cfg_scale)

    def _uniform(self, low: float, high: float, n: int, gen: torch.Generator) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)).float().to(self.device)

    def _noise(self, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen).to(like.device, like.dtype)

    def sigmas(self, grid) -> torch.Tensor:
        return sampling_sigmas(self.cfg.turbo.steps, grid[0] * grid[1], schedule=self.teacher_defaults.schedule)

    @torch.no_grad()
    def _simulate(self, noise: torch.Tensor, k: int, sigmas: torch.Tensor, grid, text) -> torch.Tensor:
        """The student's own first k Euler steps from noise: its input at step k, as at inference."""
        x = noise
        for i in range(k):
            sigma = torch.full((x.shape[0],), float(sigmas[i]))
            x = x + float(sigmas[i + 1] - sigmas[i]) * self._velocity(self.student, x, sigma, grid, text)
        return x

    def _renoise(self, x0: torch.Tensor, sigma_range: list[float], gen: torch.Generator):
        s = self._uniform(sigma_range[0], sigma_range[1], x0.shape[0], gen)
        eps = self._noise(x0, gen)
        return (1 - s[:, None, None]) * x0 + s[:, None, None] * eps, s, eps

    def _logits(self, x_t: torch.Tensor, sigma: torch.Tensor, grid, text) -> tuple[torch.Tensor, torch.Tensor]:
        """The fake score's velocity at x_t and the discriminator's logit from its tapped features."""
        v = self._velocity(self.fake, x_t, sigma, grid, text)
        return v, self.models.head(self.tap.take())

    # ---- one step ----------------------------------------------------------------------------------

    def distill_step(self) -> dict:
        cfg, loss_cfg, o = self.cfg, self.cfg.loss, self.cfg.optim
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(_seed(o.seed, self.step, self.info.rank))
        real, grid, text = self._batch(gen)
        cond_text = text[0]
        b = real.shape[0]
        sigmas = self.sigmas(grid)
        metrics: dict[str, float] = {}

        # -- the student's step
        noise = self._noise(real, gen)
        # the step the student trains at: one draw shared by every rank (each rank runs k sharded forwards)
        shared = torch.Generator().manual_seed(_seed(o.seed, self.step))
        k = int(torch.randint(cfg.turbo.steps, (1,), generator=shared))
        if cfg.turbo.backward_simulation:
            x_k = self._simulate(noise, k, sigmas, grid, cond_text)
        else:  # the forward process on real images at the grid's level k
            x_k = (1 - float(sigmas[k])) * real + float(sigmas[k]) * noise
        sigma_k = torch.full((b,), float(sigmas[k]))
        v = self._velocity(self.student, x_k, sigma_k, grid, cond_text)
        x0 = x_k - float(sigmas[k]) * v
        loss = x0.new_zeros(())
        if loss_cfg.dm_weight or loss_cfg.ca_weight:
            loss = loss + self._dmd(x0, grid, text, gen, metrics)
        if loss_cfg.isg_weight:
            loss = loss + loss_cfg.isg_weight * self._isg(x_k, k, v, sigmas, grid, text, gen, metrics)
        if loss_cfg.gan_weight:
            x_t, s, _ = self._renoise(x0, loss_cfg.dm_sigma, gen)
            _, logits = self._logits(x_t, s, grid, self._without_layout(cond_text))
            g_loss = L.generator_gan_loss(logits)
            metrics["gan_generator"] = float(g_loss.detach())
            loss = loss + loss_cfg.gan_weight * g_loss
        loss.backward()
        for p in [*self.fake.parameters(), *self.models.head.parameters()]:
            p.grad = None  # the student's update moves the student only
        _zero_missing_grads(self.student.parameters())
        metrics["student_grad_norm"] = float(full_tensor(
            torch.nn.utils.clip_grad_norm_(list(self.student.parameters()), o.grad_clip)))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.student, self.step + 1)
        if loss_cfg.ida_lambda < 1:
            L.align_fake_to_student(list(self.fake.parameters()), list(self.student.parameters()),
                                    loss_cfg.ida_lambda)

        # -- the fake score's (and the discriminator's) steps on the detached student images
        x0 = x0.detach()
        for _ in range(loss_cfg.fake_updates):
            x_t, s, eps = self._renoise(x0, [0.001, 0.999], gen)
            v_fake, fake_logits = self._logits(x_t, s, grid, cond_text)
            if loss_cfg.gan_weight and cond_text[2] is not None:  # the discriminator's read without the layout
                fake_logits = self._logits(x_t, s, grid, self._without_layout(cond_text))[1]
            f_loss = L.fake_score_loss(v_fake, x0, eps)
            metrics["fake_score"] = metrics.get("fake_score", 0.0) + float(f_loss.detach()) / loss_cfg.fake_updates
            total = f_loss
            if loss_cfg.gan_weight:
                r_t, r_s, _ = self._renoise(real, [0.001, 0.999], gen)
                _, real_logits = self._logits(r_t, r_s, grid, self._without_layout(cond_text))
                d_loss = L.discriminator_gan_loss(real_logits, fake_logits)

                def discriminator(x, r_s=r_s):
                    return self._logits(x, r_s, grid, self._without_layout(cond_text))[1]

                r1 = L.approximate_r1(discriminator, r_t, loss_cfg.r1_noise, generator=gen)
                share = 1.0 / loss_cfg.fake_updates
                metrics["gan_discriminator"] = metrics.get("gan_discriminator", 0.0) + float(d_loss.detach()) * share
                metrics["r1"] = metrics.get("r1", 0.0) + float(r1.detach()) * share
                total = total + d_loss + loss_cfg.r1_weight * r1
            total.backward()
            _zero_missing_grads([*self.fake.parameters(), *self.models.head.parameters()])
            torch.nn.utils.clip_grad_norm_([*self.fake.parameters(), *self.models.head.parameters()], o.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "k": k, **metrics, "seconds": time.perf_counter() - t0}

    def _dmd(self, x0: torch.Tensor, grid, text, gen: torch.Generator, metrics: dict) -> torch.Tensor:
        """Decoupled DMD on the student's clean estimate; one shared re-noising when the two ranges agree."""
        lc = self.cfg.loss
        cond_text = text[0]
        x_t, s, _ = self._renoise(x0.detach(), lc.dm_sigma, gen)
        v_cond, v_guided = self._teacher(x_t, s, grid, text)
        with torch.no_grad():
            v_fake = self._velocity(self.fake, x_t, s, grid, cond_text)
        sb = s[:, None, None]
        x0_cond, x0_guided, x0_fake = x_t - sb * v_cond, x_t - sb * v_guided, x_t - sb * v_fake
        dm = L.distribution_matching_push(x0_cond, x0_fake)
        if lc.ca_sigma == lc.dm_sigma:
            ca = L.cfg_augmentation_push(x0_guided, x0_cond)
            dm_norm = ca_norm = L.dmd_normaliser(x0, x0_guided)
        else:
            dm_norm = L.dmd_normaliser(x0, x0_cond)
            c_t, c_s, _ = self._renoise(x0.detach(), lc.ca_sigma, gen)
            c_cond, c_guided = self._teacher(c_t, c_s, grid, text)
            cb = c_s[:, None, None]
            ca = L.cfg_augmentation_push(c_t - cb * c_guided, c_t - cb * c_cond)
            ca_norm = L.dmd_normaliser(x0, c_t - cb * c_guided)
        metrics["dm_push"] = float((dm / dm_norm).abs().mean())
        metrics["ca_push"] = float((ca / ca_norm).abs().mean())
        return L.decoupled_dmd_loss(x0, dm, ca, dm_norm, ca_norm, lc.dm_weight, lc.ca_weight)

    def _isg(self, x_k, k: int, v, sigmas, grid, text, gen: torch.Generator, metrics: dict) -> torch.Tensor:
        """SenseFlow's intra-segment guidance on the student's jump from sigma_k to sigma_{k+1}."""
        b = x_k.shape[0]
        s_k, s_next = (torch.full((b,), float(sigmas[i]), device=x_k.device) for i in (k, k + 1))
        mid = self._uniform(float(sigmas[k + 1]), float(sigmas[k]), b, gen)

        def teacher(x, sigma):
            return self._teacher(x, sigma, grid, text)[1]

        def student(x, sigma):
            return self._velocity(self.student, x, sigma, grid, text[0])

        target = L.intra_segment_target(x_k, s_k, mid, s_next, teacher, student)
        isg = L.intra_segment_loss(x_k, s_k, s_next, v, target)
        metrics["isg"] = float(isg.detach())
        return isg

    # ---- the loop, checkpoints, export -------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.info.is_main:
            atomic_write_json(self.out / "config.json", distill_config_to_dict(cfg))
        start_step, start = self.step, time.perf_counter()
        bar = tqdm(total=cfg.optim.steps, initial=self.step, desc="distill", disable=not self.progress)
        last: dict = {}
        while self.step < cfg.optim.steps:
            last = self.distill_step()
            if self.info.is_main and self.step % cfg.log.every == 0:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(last) + "\n")
                if self.writer:
                    for key, value in last.items():
                        if isinstance(value, int | float) and key not in ("step", "k"):
                            self.writer.add_scalar(key, value, self.step)
            bar.update(1)
            if self.step % cfg.checkpoint.every == 0 or self.step == cfg.optim.steps:
                self.save()
        bar.close()
        export = self.export(self.out / "final")
        elapsed = time.perf_counter() - start
        summary = {"steps": self.step, "steps_this_run": self.step - start_step, "wall_s": elapsed,
                   "steps_per_hour": (self.step - start_step) / max(elapsed, 1e-9) * 3600, "final": last,
                   "export": str(export) if export else None, "world_size": self.info.world_size}
        if self.info.is_main:
            atomic_write_json(self.out / "summary.json", summary)
            if self.writer:
                self.writer.close()
        return summary

    def save(self) -> None:
        meta = {"source": self.source.state_dict(), "config": distill_config_to_dict(self.cfg)}
        ckpt.save_checkpoint(self.ckpt_root, self.step, self.models, self.optimizer, self.ema, meta, self.info,
                             keep=self.cfg.checkpoint.keep)

    def ema_model(self) -> LensTransformer2DModel | None:
        """An unsharded student with the EMA weights, on rank 0 (a collective under FSDP)."""
        state = {k: full_tensor(v).detach().cpu() for k, v in self.ema.shadow.items()}
        if not self.info.is_main:
            return None
        model = LensTransformer2DModel(self.student.config)
        model.load_state_dict(state)
        return model.eval()

    def pipeline(self, model: LensTransformer2DModel) -> LensPipeline:
        defaults = PipelineDefaults(**{**self.teacher_defaults.__dict__, "cfg": 1.0, "solver": "euler",
                                       "steps": self.cfg.turbo.steps,
                                       "classifier_scale": 0.0})  # the start's classifier/ is not carried over
        return LensPipeline(model, self.codec, self.text_encoder, defaults,
                            name=f"{self.teacher_name} Turbo ({self.cfg.turbo.steps} steps, distill step {self.step})")

    def export(self, directory: Path) -> Path | None:
        """The student's EMA as a pipeline folder; its defaults are the turbo preset (N steps, CFG 1)."""
        model = self.ema_model()
        if model is None:
            return None
        self.pipeline(model).save_pretrained(directory, storage=self.cfg.checkpoint.export_storage)
        return directory


__all__ = ["DistillModels", "TurboTrainer"]
