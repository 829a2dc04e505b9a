"""Reward backpropagation: the judge's shape margins differentiated into the policy (`optim.objective: backprop`).

DiffusionNFT learns from one number per image. On the Shapes model it stops with stars and hexagons mostly
misread: a scalar says an image failed, not which way its outline should move. The judge's reading of a shape
is differentiable but for its segmentation (`lensgen.shapes.soft_judge`), so each step here samples images with
the policy itself (CFG-free, the configured solver), keeping the graph through every sampling step at noise
levels up to `backprop.grad_below`, decodes them differentiably, matches the judge's objects to the objects the
prompt asks (shape and colour), and ascends their capped shape and colour margins, with `optim.kl_weight` times the mean squared gap between the
policy's and the reference's velocities at every state visited (DRaFT, Clark et al. 2023; AlignProp, Prabhudesai
et al. 2023). With `backprop.text_weight` > 0 a sign's word counts too: the judge's OCR run in torch
(`lensgen.shapes.soft_reader`) gives the CTC log-likelihood of the asked word per character, capped at
`backprop.text_cap`; otherwise sign prompts are left out, as are prompts that ask nothing the judges read.

Everything else is `NFTTrainer`'s: prompts, buckets, the EMA (what is exported), checkpoints and exact resume,
metrics, held-out evaluation. One process (no FSDP), full fine-tuning.
"""

from __future__ import annotations

import math
import time

import torch

from lensgen.errors import UserError
from lensgen.flow.sampler import integrate
from lensgen.rl.batches import by_bucket, plan_jobs
from lensgen.rl.trainer import NFTTrainer
from lensgen.shapes.soft_judge import asked_objects, margin_reward, match_objects, segmented, soft_objects
from lensgen.shapes.soft_reader import greedy_text, sign_boxes, sign_log_probs, word_log_likelihood
from lensgen.train.parallel import full_tensor


def asked_word(record) -> str | None:
    """The word a prompt's rubric asks a sign to say, if any."""
    return next((item.params["word"] for item in record.rubric.items if item.kind == "text"), None)


def learnable_prompt(record, text: bool) -> bool:
    """Whether reward backpropagation can learn from a prompt: it asks shapes, or (with `text`) a sign's word;
    without `text`, no sign prompt (its word would count for nothing)."""
    word = asked_word(record)
    return (text and word is not None) or (bool(record.rubric.expected) and word is None)


class RewardBackpropTrainer(NFTTrainer):
    stage_name = "reward backprop"

    def __init__(self, config, resume: bool = False, progress: bool = True):
        super().__init__(config, resume=resume, progress=progress)
        if self.info.world_size > 1:
            raise UserError("optim.objective backprop runs in one process; start it without torchrun")

    def _scorer(self) -> None:
        """None: reward backpropagation scores its images inside the step, through the soft judge; no thread
        waits to judge them."""
        return None

    def rl_step(self) -> dict:
        cfg, o, b = self.cfg, self.cfg.optim, self.cfg.backprop
        t0 = time.perf_counter()
        jobs = plan_jobs(self.sampler.next(), cfg.data.images_per_prompt, cfg.data.buckets_per_prompt, self.table,
                         o.seed, self.step, self.bucket_choices)
        rewards, shape_margins, colour_margins, word_scores, words_read, gaps, matched = [], [], [], [], [], [], 0
        for batch in by_bucket(jobs, lambda j: j.bucket, cfg.sample.batch_size):
            grid, noise = self.starting_noise(batch)
            feats, mask = self._features([self.prompts[j.prompt].prompt for j in batch])
            layout = self.sign_layouts(batch, grid)
            batch_gaps: list[torch.Tensor] = []

            def velocity(x, sigma, feats=feats, mask=mask, grid=grid, batch_gaps=batch_gaps, layout=layout):
                tracked = float(sigma[0]) <= b.grad_below
                with torch.set_grad_enabled(tracked), self.autocast:
                    v = self.policy(x, feats, sigma, grid, mask, layout=layout).float()
                if tracked and o.kl_weight:
                    v_ref = self.reference_velocity(x.detach(), feats, mask, sigma, grid, layout=layout)
                    batch_gaps.append((v - v_ref).square().mean())
                return v if tracked else v.detach()

            with torch.enable_grad():
                tokens = integrate(velocity, noise, self.sigmas(grid, cfg.sample.steps), solver=cfg.sample.solver)
                images = self.codec.decode_with_grad(tokens.transpose(1, 2).unflatten(2, grid).to(self.codec.dtype))
                batch_rewards = []
                for image, job in zip(images.float().clamp(-1, 1), batch, strict=True):
                    seg = segmented(image)  # one segmentation: shapes and the sign are read off it
                    matches = match_objects(soft_objects(image, seg), self.asked[job.prompt], b.margin_cap)
                    terms = [margin_reward(matches, b.margin_cap, b.colour_weight)]
                    shape_margins += [float(m.shape.detach()) for m in matches]
                    colour_margins += [float(m.colour.detach()) for m in matches if m.colour is not None]
                    word = self.words[job.prompt]
                    log_probs = sign_log_probs(image, sign_boxes(image, seg)) if word and b.text_weight else None
                    if log_probs is not None:
                        score = word_log_likelihood(log_probs, word)
                        terms.append(b.text_weight * score.clamp(max=math.log(b.text_cap)))
                        word_scores.append(float(score.detach()))
                        words_read.append(greedy_text(log_probs.detach()) == word)
                    terms = [t for t in terms if t is not None]
                    if terms:
                        batch_rewards.append(torch.stack(terms).sum())
                share = len(batch) / len(jobs)
                loss = torch.zeros((), device=self.device)
                if batch_rewards:
                    loss = loss - torch.stack(batch_rewards).sum() / len(jobs)
                if batch_gaps:
                    gap = torch.stack(batch_gaps).mean()
                    loss = loss + o.kl_weight * share * gap
                    gaps.append(float(gap.detach()))
                if loss.requires_grad:
                    loss.backward()
            rewards += [float(r.detach()) for r in batch_rewards]
            matched += len(batch_rewards)
        for p in self.policy.trainable:
            if p.grad is None:  # a parameter the loss does not reach: a zero keeps the optimiser state fixed
                p.grad = torch.zeros_like(p)
        grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(self.policy.trainable, o.grad_clip)))
        if matched:
            self.optimizer.step()  # nothing matched anywhere: no optimiser step (Adam would still move)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(self.policy.model, self.step)
        words = {"word_log_likelihood": _mean(word_scores), "word_read": _mean(words_read)} if b.text_weight else {}
        return {"step": self.step, "reward_mean": sum(rewards) / len(rewards) if rewards else float("nan"),
                "read_right": _share_positive(shape_margins), "colour_right": _share_positive(colour_margins),
                "matched_share": matched / len(jobs), **words, "kl": sum(gaps) / len(gaps) if gaps else 0.0,
                "grad_norm": grad_norm, "images": len(jobs), "seconds": time.perf_counter() - t0}

    def _load_prompts(self) -> list:
        text = self.cfg.backprop.text_weight > 0
        prompts = [p for p in super()._load_prompts() if learnable_prompt(p, text)]
        if not prompts:
            asks = "a shape or a sign's word" if text else "a shape without a sign (backprop.text_weight is 0)"
            raise UserError(f"{self.cfg.data.prompts}: no prompt asks for {asks}; reward backpropagation has "
                            "nothing to learn from")
        self.asked = [asked_objects(p.rubric) for p in prompts]
        self.words = [asked_word(p) for p in prompts]
        return prompts

    def postfix(self, metrics: dict) -> dict[str, str]:
        return {"reward": f"{metrics['reward_mean']:.3f}", "read": f"{metrics['read_right']:.2f}"}


def _share_positive(values: list[float]) -> float:
    return sum(v > 0 for v in values) / len(values) if values else float("nan")


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else float("nan")


__all__ = ["RewardBackpropTrainer", "asked_word", "learnable_prompt"]
