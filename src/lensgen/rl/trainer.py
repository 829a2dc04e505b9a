"""`lensgen rl`: DiffusionNFT post-training of a pretrained pipeline, from one CPU to many GPUs.

One RL step: draw prompts; the old policy samples each prompt's group of images CFG-free with a
deterministic solver (each sampler call one size; scoring of a batch runs in a thread while the next
batch samples); rewards become group advantages (statistics over the whole group, gathered across
ranks; a sample whose reward failed is left out); the policy trains with the NFT loss on the collected
images at the sampler's own noise levels (`optim.updates_per_step` optimiser steps); the evaluation EMA
and the old policy follow. A model with a sign layout input gets each quoting prompt's planned sign on every
pass, as the pipeline gives it. Checkpoints hold everything a resumed run needs, so stopping and resuming gives
the same losses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from lensgen.data.buckets import BucketTable
from lensgen.data.rl_prompts import load_rl_prompts
from lensgen.data.rl_prompts.records import rubric_dict
from lensgen.errors import UserError
from lensgen.flow.sampler import guided_velocity
from lensgen.flow.sampler import sample as solve
from lensgen.flow.schedule import sampling_sigmas
from lensgen.images import to_pil
from lensgen.inference.classifier_guidance import guided_velocity_fn
from lensgen.inference.pipeline import LensPipeline, PipelineDefaults, StartingPoint, model_dir
from lensgen.io import atomic_write_bytes, atomic_write_json
from lensgen.models.latent_classifier import LatentClassifier, guidance
from lensgen.models.transformer import LensTransformer2DModel
from lensgen.rl import nft
from lensgen.rl.batches import Job, PromptSampler, by_bucket, noise_seed, plan_jobs, rank_jobs
from lensgen.rl.config import RLConfig, rl_config_to_dict
from lensgen.rl.policy import PolicyModels
from lensgen.rl.ptx import PretrainAnchor
from lensgen.rl.report import reward_plot_png
from lensgen.rl.rewards import AsyncRewards, RewardResult, build_reward, reward_stats
from lensgen.shapes.sign_layout import planned_layouts
from lensgen.train import checkpoint as ckpt
from lensgen.train.ema import EMA
from lensgen.train.parallel import DistInfo, apply_fsdp, full_tensor
from lensgen.train.text_cache import CachedTextEncoder
from lensgen.train.trainer import build_optimizer, parallelize, start_run, tensorboard_writer


@dataclass
class Sample:
    """A collected image: its job, clean tokens (N, C) on CPU, token grid, reward and whether it is valid;
    the sign layout (N, f*f) it was sampled with, for a model with a layout input and a prompt quoting a word."""

    job: Job
    tokens: torch.Tensor
    grid: tuple[int, int]
    layout: torch.Tensor | None = None
    reward: float = 0.0
    valid: bool = True
    advantage: float = 0.0


class NFTTrainer:
    """One RL run, built from the config, then `run()`."""

    stage_name = "NFT"  # how the exported model's name says what trained it

    def __init__(self, config: RLConfig, resume: bool = False, progress: bool = True):
        self.cfg = config
        self.info, self.out, self.progress, self.bf16 = start_run(config.system, config.out_dir, config.optim.seed,
                                                                  progress)
        self.device = self.info.device
        cuda = self.device.type == "cuda"

        frozen_dtype = torch.bfloat16 if self.bf16 else torch.float32
        start = StartingPoint.load(config.model.init_from, self.device, frozen_dtype)
        self.base_defaults, self.base_name = start.defaults, start.name
        self.text_encoder, self.codec, model = start.text_encoder, start.codec, start.transformer
        self.text = CachedTextEncoder(self.text_encoder)  # the prompt set is finite: encode each prompt once
        reference = _load_reference(config.model.reference_from, model, self.device) \
            if config.model.reference_from else None
        self.policy = PolicyModels(model, config.model.lora_rank, config.model.lora_alpha,
                                   with_reference=config.optim.kl_weight > 0, reference=reference)
        self.classifier = LatentClassifier.from_pretrained(config.optim.kl_classifier, self.device) \
            if config.optim.kl_classifier else None
        if self.classifier is not None and self.classifier.config.channels != self.codec.token_channels:
            raise UserError(f"optim.kl_classifier {config.optim.kl_classifier} reads {self.classifier.config.channels}"
                            f"-channel latents; {config.model.init_from}'s codec makes {self.codec.token_channels} "
                            "(train one with `lensgen train-classifier --model` set to this model)")
        use_fsdp = parallelize(self.policy.model, config.system, self.info, self.bf16)
        if use_fsdp:
            for frozen in self.policy.frozen_modules():
                apply_fsdp(frozen, torch.bfloat16 if self.bf16 else None)
            self.policy.refresh_parameters()
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 and not use_fsdp \
            else torch.autocast(self.device.type, enabled=False)
        self.ema = EMA(self.policy.model, config.optim.ema_decay, trainable_only=True)
        self.optimizer = build_optimizer(self.policy.model, _AdamWSettings(config), cuda)

        self.prompts = self._load_prompts()
        self.rubrics = [rubric_dict(p.rubric) for p in self.prompts]  # the form the rewards read
        self.table = BucketTable(bases=tuple(config.data.bases), multiple=config.data.multiple)
        by_size = self.table.sizes()  # data.sizes are checked against it in the config
        self.bucket_choices = list(dict.fromkeys(by_size[tuple(hw)] for hw in config.data.sizes)) or None
        self.sampler = PromptSampler(len(self.prompts), config.data.prompts_per_step, seed=config.optim.seed)
        self.reward = build_reward(config.reward.weights, config.reward.judge or None, config.reward.shape_credit)
        self.scorer = self._scorer()
        self.ptx = PretrainAnchor(config.ptx, self.table, self.codec, self.text_encoder, self.info,
                                  config.optim.seed) if config.ptx.weight > 0 else None
        self.step = 0
        self.ckpt_root = self.out / "checkpoints"
        if resume:
            self._resume()
        self.writer = tensorboard_writer(self.out, self.info, config.log.tensorboard)

    # ---- building ---------------------------------------------------------------------------------

    def _scorer(self) -> AsyncRewards | None:
        """The background thread that judges batch k while batch k + 1 samples."""
        return AsyncRewards(self.reward, workers=self.cfg.system.reward_workers)

    def _load_prompts(self) -> list:
        prompts = load_rl_prompts(self.cfg.data.prompts)
        keep = max(1, round(len(prompts) * self.cfg.data.fraction))
        return prompts[:keep]

    def _resume(self) -> None:
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if latest is None:
            return
        meta = ckpt.load_checkpoint(latest, self.policy.model, self.optimizer, self.ema, self.info,
                                    extra=self.policy.checkpoint_state())
        self.step = meta["step"]
        self.sampler.load_state_dict(meta["prompt_sampler"])
        if self.ptx is not None and "ptx" in meta:  # an anchor first turned on at resume starts the data afresh
            self.ptx.load_state_dict(meta["ptx"])
        if self.info.is_main:
            print(f"resumed from {latest} at step {self.step}")
            ckpt.truncate_metrics(self.out / "metrics.jsonl", self.step)

    # ---- one step: collect ------------------------------------------------------------------------

    def sigmas(self, grid: tuple[int, int], steps: int) -> torch.Tensor:
        return sampling_sigmas(steps, grid[0] * grid[1], schedule=self.base_defaults.schedule)

    def _features(self, prompts: list[str]):
        text = self.text.encode(prompts)
        return text.features.to(self.device, self._dtype), text.mask.to(self.device)

    @property
    def _dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32

    def sign_layouts(self, batch: list[Job], grid: tuple[int, int]) -> torch.Tensor | None:
        """(B, N, f*f) each job's planned sign (zeros for a prompt that quotes nothing) for a model with a layout
        input, as the pipeline plans it from the prompt and the job's noise seed; None when none is needed."""
        if not self.policy.model.config.layout_channels:
            return None
        f = self.codec.spatial_factor
        seeds = [noise_seed(self.cfg.optim.seed, self.step, j.slot, j.index) for j in batch]
        layouts = planned_layouts([self.prompts[j.prompt].prompt for j in batch], seeds, grid[0] * f, grid[1] * f, f)
        return None if layouts is None else torch.from_numpy(layouts).to(self.device, self._dtype)

    def starting_noise(self, batch: list[Job]) -> tuple[tuple[int, int], torch.Tensor]:
        """The token grid of a batch's bucket (one per batch) and each job's seeded starting noise: the same
        images on any world size and after a resume."""
        bucket = self.table[batch[0].bucket]
        f = self.codec.spatial_factor
        grid = (bucket.height // f, bucket.width // f)
        noise = torch.stack([torch.randn(grid[0] * grid[1], self.codec.token_channels,
                                         generator=torch.Generator().manual_seed(
                                             noise_seed(self.cfg.optim.seed, self.step, j.slot, j.index)))
                             for j in batch])
        return grid, noise.to(self.device)

    @torch.no_grad()
    def collect(self, jobs: list[Job]) -> list[Sample]:
        """Sample this rank's jobs with the old policy (one size per sampler call) and score them; the
        scoring of a batch runs while the next one samples."""
        cfg = self.cfg
        samples: list[Sample] = []
        pending: list[tuple[list[Sample], object]] = []
        for batch in _padded(by_bucket(jobs, lambda j: j.bucket, cfg.sample.batch_size), self.info):
            grid, noise = self.starting_noise(batch)
            texts = [self.prompts[j.prompt].prompt for j in batch]
            feats, mask = self._features(texts)
            layout = self.sign_layouts(batch, grid)

            def velocity(x, sigma, feats=feats, mask=mask, grid=grid, layout=layout):
                with self.autocast:
                    return self.policy.old(x, feats, sigma, grid, mask, layout=layout).float()

            if cfg.sample.classifier_scale:  # guided toward each prompt's words, as the shipped pipeline samples
                velocity = guided_velocity_fn(velocity, self.classifier, grid, texts, cfg.sample.classifier_scale,
                                              cfg.sample.classifier_max_sigma)

            tokens = solve(velocity, noise, self.sigmas(grid, cfg.sample.steps), solver=cfg.sample.solver)
            if getattr(batch, "dummy", False):
                continue  # a padding batch: ran only to keep the ranks' collectives in step
            latents = tokens.transpose(1, 2).unflatten(2, grid)
            images = to_pil(self.codec.decode(latents.to(self.codec.dtype)).float().clamp(-1, 1))
            made = [Sample(j, t.cpu(), grid, None if layout is None or not layout[i].any() else layout[i].cpu())
                    for i, (j, t) in enumerate(zip(batch, tokens))]
            rubrics = [self.rubrics[j.prompt] for j in batch]
            pending.append((made, self.scorer.submit(images, texts, rubrics)))
            samples += made
        self._results: list[tuple[list[Sample], RewardResult]] = []
        for made, future in pending:
            result = future.result()
            for s, score, ok in zip(made, result.scores.tolist(), result.valid.tolist()):
                s.reward, s.valid = float(score), bool(ok)
            self._results.append((made, result))
        return samples

    def advantages(self, samples: list[Sample], num_jobs: int) -> dict:
        """Group advantages over the whole step (every rank's rewards gathered); returns reward statistics."""
        local = torch.tensor([[s.job.slot, s.job.index, s.reward, float(s.valid)] for s in samples],
                             dtype=torch.float64).reshape(-1, 4)
        everything = _gather_rows(local, self.info)
        order = torch.argsort(everything[:, 0] * 1_000_000 + everything[:, 1])
        everything = everything[order]
        groups, rewards, valid = everything[:, 0].long(), everything[:, 2].float(), everything[:, 3].bool()
        adv = nft.group_advantages(rewards, groups, valid, scale=self.cfg.optim.advantage_std)
        lookup = {(int(g), int(i)): float(a) for g, i, a in zip(groups, everything[:, 1], adv)}
        for s in samples:
            s.advantage = lookup[(s.job.slot, s.job.index)]
        spreads = _group_spreads(rewards, groups, valid)
        zero = [count >= 2 and std == 0 for count, std in spreads]
        stds = [std for count, std in spreads if count]
        return {"reward_mean": float(rewards[valid].mean()) if valid.any() else float("nan"),
                "reward_std": float(rewards[valid].std(unbiased=False)) if valid.any() else float("nan"),
                "invalid_share": float((~valid).float().mean()), "zero_variance_groups": sum(zero) / len(zero),
                "group_std_mean": sum(stds) / len(stds) if stds else 0.0,
                "advantage_abs_mean": float(adv[valid].abs().mean()) if valid.any() else 0.0,
                "images": int(len(everything))}

    # ---- one step: train --------------------------------------------------------------------------

    def train_on(self, samples: list[Sample]) -> dict:
        """The NFT loss over every valid sample at the sampler's noise levels: `optim.updates_per_step`
        optimiser steps, each on its share of the samples (drawn at random) plus, with `ptx.weight`, the
        flow-matching loss on a batch of pretraining data; then the EMA and the old policy follow once."""
        o = self.cfg.optim
        keep = [s for s in samples if s.valid]
        if o.updates_per_step > 1:
            order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(
                noise_seed(o.seed, self.step, -1, -1, 3))).tolist()
            shares = [[keep[i] for i in order[u::o.updates_per_step]] for u in range(o.updates_per_step)]
        else:
            shares = [keep]
        parts_sum: dict[str, float] = {}
        count, grad_norms, ptx_losses = 0, [], []
        for u, share in enumerate(shares):
            if int(_all_reduce_sum(torch.tensor(len(share)), self.info)) == 0:
                continue  # nothing to learn from anywhere: no optimiser step (Adam would still move)
            count += self._accumulate(share, samples[:1], parts_sum)
            if self.ptx is not None:
                ptx = self.ptx.loss(self.policy, (o.seed, self.step, u), self.autocast, self.device, self._dtype)
                (ptx * self.cfg.ptx.weight).backward()
                ptx_losses.append(float(ptx.detach()))
            for p in self.policy.trainable:
                if p.grad is None:  # the last block's text MLP feeds nothing: a zero keeps the optimiser state fixed
                    p.grad = torch.zeros_like(p)
            grad_norms.append(float(full_tensor(torch.nn.utils.clip_grad_norm_(self.policy.trainable, o.grad_clip))))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(self.policy.model, self.step)
        eta = nft.old_policy_decay(self.step, o.old_decay_rate, o.old_decay_cap)
        self.policy.update_old(eta)
        keys = sorted(parts_sum)
        sums = _all_reduce_sum(torch.tensor([parts_sum[k] for k in keys] + [count], dtype=torch.float64), self.info)
        metrics = {k: float(v) / max(float(sums[-1]), 1.0) for k, v in zip(keys, sums[:-1])}
        if ptx_losses:
            metrics["ptx_loss"] = float(_all_reduce_sum(torch.tensor(sum(ptx_losses) / len(ptx_losses)),
                                                        self.info)) / self.info.world_size
        metrics.update(grad_norm=max(grad_norms, default=0.0), old_decay=eta,
                       trained=int(_all_reduce_sum(torch.tensor(len(keep)), self.info)))
        return metrics

    def _accumulate(self, share: list[Sample], fallback: list[Sample], parts_sum: dict[str, float]) -> int:
        """Backward of the NFT loss averaged over this share's samples and noise levels; adds the loss parts'
        sample-weighted sums to parts_sum and returns how many (sample, level) pairs they cover."""
        cfg, o = self.cfg, self.cfg.optim
        grid_levels = int(cfg.sample.steps * cfg.sample.timestep_fraction)
        levels = min(cfg.sample.train_levels or grid_levels, grid_levels)
        batches = _padded(by_bucket(share, lambda s: s.job.bucket, o.train_batch_size), self.info,
                          fallback=fallback)
        total = max(1, len(share))
        count = 0
        for batch in batches:
            weight = 0.0 if getattr(batch, "dummy", False) else len(batch) / total / levels
            grid = batch[0].grid
            feats, mask = self._features([self.prompts[s.job.prompt].prompt for s in batch])
            uncond = self._features([""] * len(batch)) if o.kl_weight and o.kl_guidance != 1 else None
            x0 = torch.stack([s.tokens for s in batch]).to(self.device)
            layout = _stacked_layouts(batch, self.device, self._dtype)
            rubrics = [self.rubrics[s.job.prompt] for s in batch] if self.classifier is not None else None
            r = nft.optimality(torch.tensor([s.advantage for s in batch]), o.adv_clip).to(self.device)
            sigmas = self.sigmas(grid, cfg.sample.steps)[:grid_levels].float()
            orders = [torch.randperm(grid_levels, generator=torch.Generator().manual_seed(
                noise_seed(o.seed, self.step, s.job.slot, s.job.index, 1)))[:levels] for s in batch]
            for j in range(levels):
                sigma = torch.stack([sigmas[order[j]] for order in orders]).to(self.device)
                eps = torch.stack([torch.randn(s.tokens.shape, generator=torch.Generator().manual_seed(
                    noise_seed(o.seed, self.step, s.job.slot, s.job.index, 2, j))) for s in batch]).to(self.device)
                s_ = sigma[:, None, None]
                x_t = (1 - s_) * x0 + s_ * eps
                with self.autocast:
                    v_old = self.policy.old(x_t, feats, sigma, grid, mask, layout=layout).float()
                    v_ref = self.reference_velocity(x_t, feats, mask, sigma, grid, uncond, rubrics, layout)
                    v = self.policy(x_t, feats, sigma, grid, mask, layout=layout).float()
                loss, parts = nft.nft_loss(v, v_old, x_t, x0, sigma, r, beta=o.nft_beta, v_ref=v_ref,
                                           kl_weight=o.kl_weight, adv_clip=o.adv_clip,
                                           adaptive=o.adaptive_weight)
                (loss * weight).backward()
                if weight:  # sample-weighted sums, so the logged means are over samples on every world size
                    for k, val in parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + float(val) * len(batch)
                    count += len(batch)
        return count

    @torch.no_grad()
    def reference_velocity(self, x_t: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor,
                           grid: tuple[int, int], uncond: tuple[torch.Tensor, torch.Tensor] | None = None,
                           rubrics: list[dict] | None = None, layout: torch.Tensor | None = None
                           ) -> torch.Tensor | None:
        """What the KL term pulls toward (None without one): the reference's velocity, guided as the sampler
        guides (`guided_velocity`, the empty prompt as the unconditional) when `optim.kl_guidance` is not 1,
        so that the CFG-free policy learns what the reference draws with CFG; with `optim.kl_classifier`, plus
        that latent classifier's guidance toward each sample's rubric (`rubrics`, one per sample). `uncond`:
        the empty prompt's features and mask for this batch, if the caller already encoded them (one encode
        per micro-batch). `layout`: the samples' sign layouts, given to both passes as the pipeline does."""
        v = self.policy.ref(x_t, feats, sigma, grid, mask, layout=layout)
        if v is None:
            return None
        v, o = v.float(), self.cfg.optim
        if o.kl_guidance != 1:
            empty, empty_mask = uncond if uncond is not None else self._features([""] * len(x_t))
            v = guided_velocity(v, self.policy.ref(x_t, empty, sigma, grid, empty_mask, layout=layout).float(),
                                o.kl_guidance)
        if self.classifier is not None and rubrics is not None:
            v = v + guidance(self.classifier, x_t, sigma, grid, rubrics, o.kl_classifier_scale,
                             o.kl_classifier_max_sigma)
        return v

    def rl_step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        prompt_ids = self.sampler.next()
        jobs = plan_jobs(prompt_ids, cfg.data.images_per_prompt, cfg.data.buckets_per_prompt, self.table,
                         cfg.optim.seed, self.step, self.bucket_choices)
        mine = rank_jobs(jobs, self.info.rank, self.info.world_size)
        samples = self.collect(mine)
        t1 = time.perf_counter()
        stats = self.advantages(samples, len(jobs))
        stats.update(self._dimension_stats())
        t2 = time.perf_counter()
        metrics = self.train_on(samples)
        t3 = time.perf_counter()
        return {"step": self.step, **stats, **metrics, "collect_s": t1 - t0, "train_s": t3 - t2,
                "seconds": t3 - t0}

    def _dimension_stats(self) -> dict:
        """Reward mean and spread per rubric dimension, from this rank's scored images."""
        if not self._results:
            return {}
        results = [r for _, r in self._results]
        rubrics = [self.rubrics[s.job.prompt] for made, _ in self._results for s in made]
        stats = reward_stats(results, rubrics)
        return {k: v for k, v in stats.items() if k.startswith(("dim/", "by_dim/"))}

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.info.is_main:
            atomic_write_json(self.out / "config.json", rl_config_to_dict(cfg))
        start_step, start = self.step, time.perf_counter()
        bar = tqdm(total=cfg.optim.steps, initial=self.step, desc="rl", disable=not self.progress)
        last: dict = {}
        while self.step < cfg.optim.steps:
            last = self.rl_step()
            if cfg.log.eval_every and (self.step % cfg.log.eval_every == 0 or self.step == cfg.optim.steps):
                last.update(self.evaluate())
            if self.info.is_main:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(last) + "\n")
                if self.writer:
                    for k, v in last.items():
                        if isinstance(v, int | float) and k != "step":
                            self.writer.add_scalar(k, v, self.step)
                bar.set_postfix(self.postfix(last))
            bar.update(1)
            if self.step % cfg.checkpoint.every == 0 or self.step == cfg.optim.steps:
                self.save()
        bar.close()
        if not last and self.info.is_main and (self.out / "metrics.jsonl").exists():  # resumed with no step left
            lines = (self.out / "metrics.jsonl").read_text().splitlines()
            last = json.loads(lines[-1]) if lines else {}
        if self.scorer is not None:
            self.scorer.close()  # and the reward with it
        elif hasattr(self.reward, "close"):
            self.reward.close()
        self.write_rank_report()
        export = self.export(self.out / "final")
        elapsed = time.perf_counter() - start
        summary = {"steps": self.step, "steps_this_run": self.step - start_step, "wall_s": elapsed,
                   "steps_per_hour": (self.step - start_step) / max(elapsed, 1e-9) * 3600, "final": last,
                   "export": str(export) if export else None, "world_size": self.info.world_size}
        if self.info.is_main:
            if summary["steps_this_run"] or not (self.out / "summary.json").exists():  # keep the run's timings
                atomic_write_json(self.out / "summary.json", summary)
            metrics = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines() if line]
            if metrics:
                atomic_write_bytes(self.out / "reward.png", reward_plot_png(metrics))
            if self.writer:
                self.writer.close()
        return summary

    def postfix(self, metrics: dict) -> dict[str, str]:
        """What the progress bar shows of a step's metrics."""
        return {"reward": f"{metrics['reward_mean']:.3f}", "zero": f"{metrics['zero_variance_groups']:.2f}"}

    def write_rank_report(self) -> None:
        """Each rank's view of the final weights (a collective under FSDP): ranks must agree exactly."""
        def sq_sum(tensors) -> float:
            return sum(float(full_tensor(t.detach()).double().square().sum()) for t in tensors)

        atomic_write_json(self.out / "ranks" / f"rank{self.info.rank}.json", {
            "rank": self.info.rank, "world_size": self.info.world_size, "step": self.step,
            "policy_sq_sum": sq_sum(self.policy.trainable), "old_sq_sum": sq_sum(self.policy.old_weights),
            "ema_sq_sum": sq_sum(self.ema.shadow.values())})

    def save(self) -> None:
        meta = {"prompt_sampler": self.sampler.state_dict(), "config": rl_config_to_dict(self.cfg)}
        if self.ptx is not None:
            meta["ptx"] = self.ptx.state_dict()
        ckpt.save_checkpoint(self.ckpt_root, self.step, self.policy.model, self.optimizer, self.ema, meta,
                             self.info, keep=self.cfg.checkpoint.keep, extra=self.policy.checkpoint_state())

    # ---- evaluation and export --------------------------------------------------------------------

    def ema_model(self) -> LensTransformer2DModel | None:
        """An unsharded plain transformer with the EMA weights (LoRA merged), on rank 0; a collective."""
        ema = {k: full_tensor(v).detach().cpu() for k, v in self.ema.shadow.items()}
        full = {k: full_tensor(v).detach().cpu() for k, v in self.policy.model.state_dict().items()}
        if not self.info.is_main:
            return None
        state = self.policy.merged_state_dict({**full, **ema})
        model = LensTransformer2DModel(self.policy.model.config)
        model.load_state_dict(state)
        return model.eval()

    def pipeline(self, model: LensTransformer2DModel) -> LensPipeline:
        defaults = PipelineDefaults(**{**self.base_defaults.__dict__, "cfg": 1.0, "solver": self.cfg.sample.solver,
                                       "steps": self.cfg.checkpoint.export_steps,
                                       "classifier_scale": 0.0})  # the start's classifier/ is not carried over
        return LensPipeline(model, self.codec, self.text_encoder, defaults,
                            name=f"{self.base_name} + {self.stage_name} step {self.step}")

    def evaluate(self) -> dict:
        """Held-out ShapesEval on a fixed subset with the EMA model, CFG-free (rank 0; the others wait)."""
        from lensgen.eval.shapes import evaluate, pipeline_generator
        from lensgen.shapes.evalset import load_prompts

        model = self.ema_model()
        out: dict = {}
        if model is not None:
            log = self.cfg.log
            pipe = self.pipeline(model.to(self.device))
            generate = pipeline_generator(pipe, pipe.defaults.height, pipe.defaults.width, log.eval_steps, 1.0)
            result = evaluate(generate, n_per_prompt=log.eval_images_per_prompt, batch_size=16,
                              prompts=load_prompts(limit=log.eval_limit), progress=False)
            out = {f"eval/{t}": v for t, v in result.tasks.items()}
            out["eval/overall"] = result.overall
        if self.info.distributed:
            dist.barrier()
        return out

    def export(self, directory: Path) -> Path | None:
        """The EMA weights as a pipeline folder sampling CFG-free (`lensgen generate --model` loads it)."""
        model = self.ema_model()
        if model is None:
            return None
        self.pipeline(model).save_pretrained(directory, storage=self.cfg.checkpoint.export_storage)
        return directory


def _group_spreads(rewards: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor) -> list[tuple[int, float]]:
    """Each group's number of valid rewards and their spread within the group: the signal a step can learn
    from (reward_std also counts the spread between prompts, which teaches nothing)."""
    spreads = []
    for g in torch.unique(groups):
        kept = rewards[(groups == g) & valid]
        spreads.append((len(kept), float(kept.std(unbiased=False)) if len(kept) else 0.0))
    return spreads


class _AdamWSettings:
    """The fields `train.trainer.build_optimizer` reads, from the RL config."""

    def __init__(self, config: RLConfig):
        o = config.optim
        self.lr, self.betas, self.weight_decay = o.lr, o.betas, o.weight_decay


class _Batch(list):
    """A micro-batch; `dummy` marks one run only so that every rank makes the same collective calls."""

    dummy = False


def _padded(batches: list[list], info: DistInfo, fallback: list | None = None) -> list[_Batch]:
    """The batches, plus dummy repeats so every rank runs as many as the busiest one (FSDP's forward and
    backward passes are collectives)."""
    out = [_Batch(b) for b in batches]
    if not info.distributed:
        return out
    most = torch.tensor(len(out))
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    filler = out[-1] if out else (fallback or [])
    if len(out) < int(most) and not filler:
        raise RuntimeError(f"rank {info.rank} has nothing to pad its {len(out)} batches to {int(most)} with")
    while len(out) < int(most):
        dummy = _Batch(filler)
        dummy.dummy = True
        out.append(dummy)
    return out


def _all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def _gather_rows(rows: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's rows (R_i, K) concatenated, in rank order."""
    if not info.distributed:
        return rows
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([rows.shape[0]]))
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros(most, rows.shape[1], dtype=rows.dtype)
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(n.item())] for g, n in zip(gathered, sizes)])


def _stacked_layouts(samples: list[Sample], device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """The samples' sign layouts as one batch (zeros for those without), or None when none has one."""
    first = next((s.layout for s in samples if s.layout is not None), None)
    if first is None:
        return None
    return torch.stack([first.new_zeros(first.shape) if s.layout is None else s.layout for s in samples]).to(
        device, dtype)


def _load_reference(folder: str, model: LensTransformer2DModel, device: torch.device) -> LensTransformer2DModel:
    """The transformer of the pipeline folder `model.reference_from`, in fp32 like the policy; it must be the
    policy's architecture (it reads the same text features and latents)."""
    reference = LensTransformer2DModel.from_pretrained(model_dir(folder) / "transformer")
    ours, theirs = model.config.to_dict(), reference.config.to_dict()
    different = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if different:
        fields = ", ".join(f"{k} {theirs.get(k)!r} (the policy: {ours.get(k)!r})" for k in different)
        raise UserError(f"model.reference_from: {model_dir(folder) / 'transformer'} is another architecture: {fields}")
    return reference.to(device).float()


__all__ = ["NFTTrainer", "Sample"]

