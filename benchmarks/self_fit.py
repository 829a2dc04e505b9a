"""Can a model learn its own best images? Reward-filtered self-training (RAFT), measured on its prompts.

RL turns a model's better tries into its usual ones. This probes the simplest form of that: sample
`--n` images per training prompt (CFG-free, the model's own solver and size), keep the ones the reward
passes (at most `--keep` per prompt, best partial credit first), fine-tune on them with pretraining's
rectified-flow loss (AdamW, EMA), then sample the same prompts with the same seeds again. A model that
can fit its kept images passes far more of them afterwards; one that cannot stays where it was. The
fine-tuned pipeline is saved to `--out` for held-out scoring with `lensgen eval shapes --model OUT`.

    python benchmarks/self_fit.py runs/sign60-fp32/final --prompts runs/rl-prompts-mix-signs.jsonl \\
        --count 200 --steps 1000 --lr 3e-4 --out runs/self-fit
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from pathlib import Path

import torch

from lensgen.data.rl_prompts import load_rl_prompts
from lensgen.data.rl_prompts.records import rubric_dict
from lensgen.inference.pipeline import LensPipeline
from lensgen.io import atomic_write_json
from lensgen.rl.rewards import build_reward
from lensgen.train.batch import collate
from lensgen.train.config import OptimConfig
from lensgen.train.ema import EMA
from lensgen.train.objective import SigmaSampling, masked_mse, noisy_input
from lensgen.train.text_cache import CachedTextEncoder
from lensgen.train.trainer import lr_at


def collect(pipe: LensPipeline, prompts: list, n: int, keep: int, reward: str, threshold: float, steps: int,
            seed: int, batch: int = 64) -> tuple[list[int], list, list[str]]:
    """Passing images per prompt of n each (image k of prompt i: seed + i * n + k), and the kept images and
    their prompts: at most `keep` per prompt with reward >= threshold, the best partial credit first."""
    judge, credit = build_reward({reward: 1.0}), build_reward({"rubric_items": 1.0})
    passed, kept, texts = [], [], []
    per_call = max(1, batch // n)
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start:start + per_call]
        group_texts = [p.prompt for p in chunk for _ in range(n)]
        rubrics = [rubric_dict(p.rubric) for p in chunk for _ in range(n)]
        images = pipe(group_texts, steps=steps, cfg=1.0, seed=[seed + start * n + i for i in range(len(group_texts))])
        ok = [s >= threshold for s in judge(images, group_texts, rubrics).scores.tolist()]  # NaN (failed): False
        partial = credit(images, group_texts, rubrics).scores.nan_to_num(-1.0).tolist()
        for j in range(len(chunk)):
            group = [i for i in range(j * n, (j + 1) * n) if ok[i]]
            passed.append(len(group))
            for i in sorted(group, key=lambda i: -partial[i])[:keep]:
                kept.append(images[i])
                texts.append(group_texts[i])
    return passed, kept, texts


def fine_tune(pipe: LensPipeline, images: list, texts: list[str], steps: int, lr: float, batch_size: int,
              ema_decay: float, seed: int, progress: bool = True,
              sigmas: SigmaSampling | None = None) -> tuple[torch.nn.Module, list[float]]:
    """Pretraining's loss on (image, prompt) pairs, shuffled epochs; returns the EMA model and the losses.
    `sigmas`: the noise levels trained (default: pretraining's)."""
    tokens = collate(images, texts, pipe.codec)
    encoder = CachedTextEncoder(pipe.text_encoder)  # a few hundred prompts, each encoded once
    model = copy.deepcopy(pipe.transformer).train().requires_grad_(True)
    ema = EMA(model, ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = OptimConfig(steps=steps, lr=lr, warmup_steps=20)  # a short warm-up: Adam's first steps are the largest
    sigmas, gen, rng = sigmas or SigmaSampling(), torch.Generator().manual_seed(seed), random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        while len(order) < batch_size:  # a small set: as many shuffled epochs as a batch needs
            order = order + rng.sample(range(len(texts)), len(texts))
        idx, order = order[:batch_size], order[batch_size:]
        sizes = [tokens.sizes[i] for i in idx]
        text = encoder.encode([texts[i] for i in idx])
        x0 = tokens.tokens[idx]
        mask = tokens.token_mask[idx] if tokens.token_mask is not None else None
        sigma = sigmas.sample(torch.tensor([h * w for h, w in sizes]), gen)
        x_t, target = noisy_input(x0, torch.randn(x0.shape, generator=gen), sigma)
        loss = masked_mse(model(x_t, text.features, sigma, sizes, text.mask), target, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1, schedule)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)
        losses.append(float(loss.detach()))
        if progress and step % 50 == 0:
            print(f"  step {step}/{steps}: loss {statistics.mean(losses[-50:]):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    model.load_state_dict(ema.state_dict(), strict=False)  # the average's parameters; buffers are the same
    return model.eval(), losses


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a shipped model name or pipeline folder")
    parser.add_argument("--prompts", required=True, help="an RL prompt file (`lensgen data rl-prompts`)")
    parser.add_argument("--first", type=int, default=0, help="the first prompt used")
    parser.add_argument("--count", type=int, default=200, help="prompts used")
    parser.add_argument("--n", type=int, default=8, help="images per prompt")
    parser.add_argument("--keep", type=int, default=4, help="kept passing images per prompt, at most")
    parser.add_argument("--reward", default="geneval", help="the reward whose score decides a pass")
    parser.add_argument("--threshold", type=float, default=1.0, help="a pass: reward >= this")
    parser.add_argument("--sample-steps", type=int, default=10, help="sampler steps (RL's collection: 10)")
    parser.add_argument("--steps", type=int, default=1000, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="", help="save the fine-tuned pipeline (and summary.json) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = LensPipeline.from_pretrained(args.model, device="cpu")
    prompts = load_rl_prompts(args.prompts)[args.first:args.first + args.count]
    sampling = dict(n=args.n, keep=args.keep, reward=args.reward, threshold=args.threshold,
                    steps=args.sample_steps, seed=args.seed)
    before, images, texts = collect(pipe, prompts, **sampling)
    taught = [i for i, count in enumerate(before) if count]  # the prompts with kept images
    print(f"{args.model}: {sum(before)} of {len(prompts) * args.n} images pass; {len(images)} kept from "
          f"{len(taught)} prompts", flush=True)
    if not images:
        raise SystemExit(f"no image passed {args.reward} >= {args.threshold}: nothing to fine-tune on")
    model, losses = fine_tune(pipe, images, texts, args.steps, args.lr, args.batch_size, args.ema, args.seed)
    tuned = copy.copy(pipe)
    tuned.transformer = model
    after, _, _ = collect(tuned, prompts, **sampling)
    window = max(1, min(50, len(losses) // 2))

    def rate(counts: list[int], which) -> float:
        return sum(counts[i] for i in which) / (len(which) * args.n)

    summary = {"model": args.model, "prompts": len(prompts), "images": len(prompts) * args.n, "kept": len(images),
               "taught_prompts": len(taught), "steps": args.steps,
               "pass_before": rate(before, range(len(prompts))), "pass_after": rate(after, range(len(prompts))),
               "taught_pass_before": rate(before, taught), "taught_pass_after": rate(after, taught),
               "loss_first": statistics.mean(losses[:window]) if losses else None,
               "loss_last": statistics.mean(losses[-window:]) if losses else None}
    print(f"after {args.steps} steps on the kept images (loss {summary['loss_first']:.4f} -> "
          f"{summary['loss_last']:.4f}), same prompts and seeds: all prompts pass "
          f"{summary['pass_before']:.3f} -> {summary['pass_after']:.3f}; the {len(taught)} prompts with kept images "
          f"{summary['taught_pass_before']:.3f} -> {summary['taught_pass_after']:.3f} (a model that fits its "
          f"kept images passes ~1.0 there)")
    if args.out:
        tuned.name = f"{pipe.name} + {args.steps} self-fit steps"
        tuned.save_pretrained(args.out)
        atomic_write_json(Path(args.out) / "summary.json", summary)
        print(f"saved {args.out}: lensgen eval shapes --model {args.out}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
