"""The pretraining loop: mixed-resolution flow matching, from one CPU to many GPUs under torchrun.

Every random draw of step s on rank r (caption choice and dropout, sigma, noise) comes from generators
seeded by (seed, s, r), so a resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lensgen.compute import StepShape, mfu, training_flops
from lensgen.data.buckets import BucketTable
from lensgen.data.sources import BatchSource, build_batch_source
from lensgen.errors import UserError
from lensgen.io import atomic_write_json
from lensgen.models.text_encoder import TextFeatures, build_text_encoder
from lensgen.models.transformer import LensTransformer2DModel, LensTransformerConfig, preset
from lensgen.models.vae import build_codec
from lensgen.train import checkpoint as ckpt
from lensgen.train.batch import TokenBatch, load_batch
from lensgen.train.config import ModelConfig, OptimConfig, SystemConfig, TrainConfig, config_to_dict
from lensgen.train.ema import EMA
from lensgen.train.materialize import init_shards, load_shards, meta_transformer, pretrained_config
from lensgen.train.objective import SigmaSampling, masked_mse, noisy_input
from lensgen.train.parallel import (
    DistInfo,
    all_reduce_mean,
    apply_activation_checkpointing,
    apply_compile,
    apply_fsdp,
    full_tensor,
    init_distributed,
    node_mesh,
    shard_frozen,
)
from lensgen.train.prefetch import Prefetcher
from lensgen.train.text_cache import text_features

VAL_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class PreparedBatch:
    """A micro-batch ready to train on, and the data position right after it (what a checkpoint keeps)."""

    batch: TokenBatch
    text: TextFeatures
    keys: list
    sampler_state: dict


def lr_at(step: int, cfg) -> float:
    """Linear warm-up, then constant or cosine down to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def transformer_config(model: ModelConfig) -> LensTransformerConfig:
    """The preset named by the config with its overrides applied."""
    base = preset(model.preset)
    overrides = dict(model.overrides)
    for key in ("selected_layer_index", "axes_dims_rope"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    try:
        return replace(base, **overrides)
    except TypeError as err:
        raise UserError(f"config field model.overrides: {err}") from None


def start_run(system: SystemConfig, out_dir: str, seed: int, progress: bool) -> tuple[DistInfo, Path, bool, bool]:
    """What every trainer (pretraining, RL, distillation) does first: join the process group (if torchrun
    started one), set the CPU threads and the seed, pick the precision. Returns (the rank's DistInfo, the
    output folder, whether this rank shows progress, bf16: on CUDA unless the config says fp32)."""
    info = init_distributed(system.device)
    if system.threads:
        torch.set_num_threads(system.threads)
    cuda = info.device.type == "cuda"
    bf16 = system.precision == "bf16" or (system.precision == "auto" and cuda)
    torch.manual_seed(seed)
    return info, Path(out_dir), progress and info.is_main, bf16


def tensorboard_writer(out: Path, info: DistInfo, enabled: bool):
    """OUT/tensorboard on rank 0 when enabled, else None."""
    if not (info.is_main and enabled):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))


def build_transformer(model: ModelConfig) -> LensTransformer2DModel:
    """The transformer to train: the preset with its overrides, or a pipeline folder's weights (init_from)."""
    if model.init_from:
        return LensTransformer2DModel.from_pretrained(Path(model.init_from) / "transformer")
    return LensTransformer2DModel(transformer_config(model))


def fsdp_enabled(system: SystemConfig, info: DistInfo) -> bool:
    return system.fsdp is True or (system.fsdp == "auto" and info.distributed)


def build_sharded_transformer(model: ModelConfig, system: SystemConfig, info: DistInfo,
                              bf16: bool) -> LensTransformer2DModel:
    """The transformer built on the meta device, parallelised (FSDP2 shards), then its shards allocated on
    this rank's device and filled: initialised exactly as `build_transformer` would with the same RNG
    state, or loaded from `init_from`. No rank holds a full copy (see lensgen.train.materialize)."""
    folder = Path(model.init_from) / "transformer" if model.init_from else None
    net = meta_transformer(pretrained_config(folder) if folder else transformer_config(model))
    parallelize(net, system, info, bf16)
    net.to_empty(device=info.device)
    if folder:
        load_shards(net, folder)
    else:
        init_shards(net)
    return net


def shard_text_encoder(encoder, mesh) -> None:
    """FSDP2 over the frozen LM's decoder blocks (BERT's encoder layers for MiniLM), then the whole; every
    forward becomes a collective, so the encoder runs one even for a batch of only empty prompts."""
    lm = encoder.model
    blocks = lm.layers if hasattr(lm, "layers") else lm.encoder.layer
    shard_frozen(lm, blocks, mesh)
    # FSDP2 keeps the root's parameters gathered after a forward (training would need them for backward);
    # here no backward follows, so give them back (GPT-OSS's embeddings alone are 1.2 GB)
    lm.register_forward_hook(lambda module, args, output: module.reshard())
    encoder.collective = True


def parallelize(model: LensTransformer2DModel, system: SystemConfig, info: DistInfo, bf16: bool, mesh=None) -> bool:
    """Activation checkpointing, per-block compile and FSDP2, applied in place. Returns whether FSDP shards it."""
    use_fsdp = fsdp_enabled(system, info)
    if system.activation_checkpointing:
        apply_activation_checkpointing(model)
    if system.compile:
        apply_compile(model)
    if use_fsdp:
        apply_fsdp(model, torch.bfloat16 if bf16 else None, mesh)
    return use_fsdp


def build_optimizer(model: nn.Module, o: OptimConfig, cuda: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                             fused=cuda or None)


def build_source(cfg: TrainConfig, table: BucketTable, patch: int, info: DistInfo) -> BatchSource:
    """This rank's training batches over the buckets of `table`, as the data section says."""
    d, o = cfg.data, cfg.optim
    return build_batch_source(d.source, table, o.batch_size, patch, seed=o.seed, rank=info.rank,
                              world_size=info.world_size, mode=d.sampler, shards=d.shards,
                              num_items=d.num_items, shuffle_buffer=d.shuffle_buffer)


class Trainer:
    """One pretraining run: built top to bottom from the config, then `run()`."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True):
        self.cfg = config
        self.info, self.out, self.progress, self.bf16 = start_run(config.system, config.out_dir, config.optim.seed,
                                                                  progress)
        self.device = self.info.device
        cuda = self.device.type == "cuda"

        frozen_dtype = torch.bfloat16 if self.bf16 else torch.float32
        use_fsdp = fsdp_enabled(config.system, self.info)
        self.text_encoder_sharded = bool(config.system.text_encoder_fsdp) and use_fsdp
        if self.text_encoder_sharded:  # read on the host, then only this rank's shards go to its device
            self.text_encoder = build_text_encoder(config.model.text_encoder, dtype=frozen_dtype)
            shard_text_encoder(self.text_encoder, node_mesh(self.info, config.system.text_encoder_fsdp))
        else:
            self.text_encoder = build_text_encoder(config.model.text_encoder, device=self.device, dtype=frozen_dtype)
        self.text = text_features(self.text_encoder, config.data.text_cache)
        self.codec = build_codec(config.model.codec, device=self.device)
        if use_fsdp:  # meta -> shard -> fill: the full fp32 model never exists on any rank
            self.model = build_sharded_transformer(config.model, config.system, self.info, self.bf16).train()
        else:
            self.model = build_transformer(config.model).to(self.device).train()
            parallelize(self.model, config.system, self.info, self.bf16)
        self.ema = EMA(self.model, config.optim.ema_decay)  # after FSDP: each rank averages its own shards
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if self.bf16 and not use_fsdp else nullcontext())
        self.optimizer = build_optimizer(self.model, config.optim, cuda)
        self.sigmas = SigmaSampling(config.optim.logit_mean, config.optim.logit_std, config.optim.sigma_shift)

        self.table = BucketTable(bases=tuple(config.data.bases), multiple=config.data.multiple)
        self.source = build_source(config, self.table, self.codec.spatial_factor, self.info)
        self.step = 0
        self.ckpt_root = self.out / "checkpoints"
        if resume:
            self._resume()
        self.batches = iter(self.source)
        self.sampler_state = self.source.state_dict()  # as of the last batch trained on
        prefetch = config.system.prefetch is True or (config.system.prefetch == "auto" and cuda)
        self.prefetcher = Prefetcher(self._prepare, self._next_key, enabled=prefetch)
        self.val_batch = self._validation_batch() if config.log.val_every else None
        self.writer = tensorboard_writer(self.out, self.info, config.log.tensorboard)

    def _resume(self) -> None:
        """Continue from the latest checkpoint, if there is one: weights, optimiser, EMA, step, data position."""
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if latest is None:
            return
        meta = ckpt.load_checkpoint(latest, self.model, self.optimizer, self.ema, self.info)
        self.step = meta["step"]
        self.source.load_state_dict(meta["sampler"])
        if self.info.is_main:
            print(f"resumed from {latest} at step {self.step}")
            ckpt.truncate_metrics(self.out / "metrics.jsonl", self.step)

    # ---- batches -----------------------------------------------------------------------------

    def _load_batch(self, keys: list, rng: random.Random, caption_dropout: float | None = None) -> TokenBatch:
        """Load the items of a batch, pick each one's caption (or the empty prompt), encode the images."""
        d = self.cfg.data
        dropout = self.cfg.optim.caption_dropout if caption_dropout is None else caption_dropout
        return load_batch(self.source, keys, self.codec, rng, caption=d.caption, dense_prob=d.dense_prob,
                          caption_mix=d.caption_mix, dropout=dropout)

    def _validation_batch(self) -> tuple[TokenBatch, TextFeatures]:
        """A fixed batch (one item per bucket, up to 8) for loss-at-fixed-sigma curves."""
        rng = random.Random(12345)
        keys = self.source.validation_items(min(8, len(self.table)))
        batch = self._load_batch(keys, rng, caption_dropout=0.0)
        return batch, self.text.encode(batch.prompts)

    def _loss(self, batch: TokenBatch, text: TextFeatures, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x0 = batch.tokens.to(self.device)
        x_t, target = noisy_input(x0, noise.to(self.device), sigma.to(self.device))
        with self.autocast:
            out = self.model(x_t, text.features.to(self.device), sigma.to(self.device), batch.sizes,
                             text.mask.to(self.device))
        mask = batch.token_mask.to(self.device) if batch.token_mask is not None else None
        return masked_mse(out.float(), target, mask)

    def _prepare(self, key: tuple[int, int]) -> PreparedBatch:
        """Draw, load and text-encode the batch of (step, micro-step); may run in the prefetch thread."""
        step, micro = key
        keys = next(self.batches)
        sampler_state = self.source.state_dict()  # right after this batch: what a checkpoint must hold
        rng = random.Random(f"step-{self._draw_key(step, micro)}")
        batch = self._load_batch(keys, rng)
        return PreparedBatch(batch, self.text.encode(batch.prompts), keys, sampler_state)

    def _draw_key(self, step: int, micro: int) -> tuple[int, int, int, int]:
        """What every random draw of a micro-step is seeded from (captions and dropout; sigma and noise)."""
        return (self.cfg.optim.seed, step, self.info.rank, micro)

    def _next_key(self, key: tuple[int, int]) -> tuple[int, int]:
        step, micro = key
        return (step, micro + 1) if micro + 1 < self.cfg.optim.grad_accum else (step + 1, 0)

    # ---- the loop ----------------------------------------------------------------------------

    def train_step(self) -> dict:
        o = self.cfg.optim
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, o)
        total, images, waste, flops = 0.0, 0, [], 0
        for micro in range(o.grad_accum):
            gen = torch.Generator().manual_seed(hash(self._draw_key(self.step, micro)) & 0x7FFF_FFFF_FFFF)
            prepared = self.prefetcher.get((self.step, micro))
            batch, text, keys = prepared.batch, prepared.text, prepared.keys
            self.sampler_state = prepared.sampler_state
            waste.append(self.source.padding_waste(keys))
            flops += training_flops(self.model.config, StepShape(len(keys), batch.tokens.shape[1], text.length))
            tokens_per_sample = torch.tensor([h * w for h, w in batch.sizes])
            sigma = self.sigmas.sample(tokens_per_sample, gen)
            noise = torch.randn(batch.tokens.shape, generator=gen)
            loss = self._loss(batch, text, sigma, noise) / o.grad_accum
            loss.backward()
            total += loss.item()
            images += len(keys)
        for p in self.model.parameters():
            # The last block's text-stream output feeds nothing, so its MLP gets no gradient. A zero gradient
            # gives it optimizer state like every other parameter, so checkpoints have one fixed key set.
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(self.model, self.step)
        loss_mean = all_reduce_mean(torch.tensor(total, device=self.device), self.info).item()
        flops_all = all_reduce_mean(torch.tensor(float(flops), device=self.device, dtype=torch.float64),
                                    self.info).item() * self.info.world_size
        return {"loss": loss_mean, "tflop": flops_all / 1e12, "grad_norm": float(full_tensor(grad_norm)), "lr": lr_at(self.step - 1, o),
                "images": images * self.info.world_size, "padding_waste": sum(waste) / len(waste)}

    @torch.no_grad()
    def validation_losses(self) -> dict[str, float]:
        batch, text = self.val_batch
        gen = torch.Generator().manual_seed(777)
        noise = torch.randn(batch.tokens.shape, generator=gen)
        out = {}
        for s in VAL_SIGMAS:
            sigma = torch.full((len(batch.sizes),), s)
            out[f"val_loss@{s}"] = all_reduce_mean(self._loss(batch, text, sigma, noise).detach(), self.info).item()
        return out

    def run(self) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        self.out.mkdir(parents=True, exist_ok=True)
        if self.info.is_main:
            atomic_write_json(self.out / "config.json", config_to_dict(cfg))
        metrics_path = self.out / "metrics.jsonl"
        start_step, start = self.step, time.perf_counter()
        bar = tqdm(total=o.steps, initial=self.step, desc="train", disable=not self.progress)
        last = {}
        while self.step < o.steps:
            t0 = time.perf_counter()
            last = self.train_step()
            last.update(step=self.step, seconds=time.perf_counter() - t0)
            last["images_per_s"] = last["images"] / last["seconds"]
            last["tflops_per_gpu"] = last["tflop"] / last["seconds"] / self.info.world_size
            if self.cfg.system.peak_tflops is not None:  # model FLOPs utilisation against the card's peak
                last["mfu"] = mfu(last["tflop"] * 1e12, last["seconds"], self.cfg.system.peak_tflops,
                                  self.info.world_size)
            if cfg.log.val_every and (self.step % cfg.log.val_every == 0 or self.step == o.steps):
                last.update(self.validation_losses())
            if self.info.is_main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(last) + "\n")
                if self.writer:
                    for k, v in last.items():
                        if isinstance(v, float | int) and k != "step":
                            self.writer.add_scalar(k.replace("@", "/sigma_"), v, self.step)
                bar.set_postfix(loss=f"{last['loss']:.4f}", ips=f"{last['images_per_s']:.1f}")
            bar.update(1)
            if cfg.log.val_images_every and self.step % cfg.log.val_images_every == 0:
                self.log_images()
            if self.step % cfg.checkpoint.every == 0 or self.step == o.steps:
                self.save()
        bar.close()
        self.prefetcher.shutdown()
        self.write_rank_report()
        export_dir = self.export(self.out / "final")
        elapsed = time.perf_counter() - start
        summary = {"steps": self.step, "steps_this_run": self.step - start_step, "wall_s": elapsed,
                   "images_per_s": (self.step - start_step) * o.batch_size * o.grad_accum * self.info.world_size
                   / max(elapsed, 1e-9), "final": last, "export": str(export_dir) if export_dir else None,
                   "world_size": self.info.world_size, "device": str(self.device)}
        if self.info.is_main:
            atomic_write_json(self.out / "summary.json", summary)
            if self.writer:
                self.writer.close()
        return summary

    def write_rank_report(self) -> None:
        """Each rank's view of the final weights (a collective under FSDP): ranks must agree exactly."""
        checksum = sum(float(full_tensor(p.detach()).double().square().sum()) for p in self.model.parameters())
        ema = sum(float(full_tensor(v).double().square().sum()) for v in self.ema.shadow.values())
        atomic_write_json(self.out / "ranks" / f"rank{self.info.rank}.json",
                          {"rank": self.info.rank, "world_size": self.info.world_size, "step": self.step,
                           "param_sq_sum": checksum, "ema_sq_sum": ema})

    def save(self) -> None:
        meta = {"sampler": self.sampler_state, "config": config_to_dict(self.cfg)}
        ckpt.save_checkpoint(self.ckpt_root, self.step, self.model, self.optimizer, self.ema, meta, self.info, keep=self.cfg.checkpoint.keep, rank_meta={"sampler": self.sampler_state})

    def ema_model(self) -> LensTransformer2DModel | None:
        """An unsharded copy of the model holding the EMA weights (on rank 0; a collective under FSDP)."""
        full = {k: full_tensor(v).detach().cpu() for k, v in self.ema.shadow.items()}
        if not self.info.is_main:
            return None
        base = self.model.config
        model = LensTransformer2DModel(base)
        model.load_state_dict(full)
        return model.eval()

    def sampling_schedule(self) -> str | float:
        """The sampler's noise-schedule shift that matches the one this run trains with."""
        shift = self.cfg.optim.sigma_shift
        return "train" if shift == "flux2" else 0.0 if shift == "none" else float(shift)

    def pipeline_defaults(self):
        """Sampler settings of this run's model: the middle size class, 20 steps, its CFG and shift."""
        from lensgen.inference.pipeline import PipelineDefaults

        mid = self.cfg.data.bases[len(self.cfg.data.bases) // 2]
        return PipelineDefaults(height=mid, width=mid, steps=20, cfg=self.cfg.model.guidance,
                                schedule=self.sampling_schedule(),
                                max_side=2 * max(max(b.height, b.width) for b in self.table))

    def export(self, directory: Path) -> Path | None:
        """The EMA weights as a `LensPipeline` folder that `lensgen generate --model` loads."""
        from lensgen.inference.pipeline import LensPipeline

        model = self.ema_model()
        if model is None:
            return None
        # a sharded encoder stays where its shards are: the folder only records its config
        text_encoder = self.text_encoder if self.text_encoder_sharded else self.text_encoder.cpu()
        pipe = LensPipeline(model, self.codec.cpu(), text_encoder, self.pipeline_defaults(),
                            name=f"{self.cfg.model.preset} step {self.step}")
        pipe.save_pretrained(directory, storage=self.cfg.checkpoint.export_storage)
        self.codec.to(self.device)
        if not self.text_encoder_sharded:
            self.text_encoder.to(self.device)
        return directory

    def log_images(self) -> None:
        model = self.ema_model()
        if model is None or self.writer is None:
            return
        from lensgen.inference.pipeline import LensPipeline

        pipe = LensPipeline(model.to(self.device), self.codec, self.text_encoder, self.pipeline_defaults())
        images = pipe(self.cfg.log.val_prompts, seed=list(range(len(self.cfg.log.val_prompts))), output_type="pt")
        self.writer.add_images("val_images", (images + 1) / 2, self.step)
