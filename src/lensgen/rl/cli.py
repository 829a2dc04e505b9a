"""`lensgen rl`: RL post-training of a pretrained pipeline folder (DiffusionNFT, or reward backpropagation)."""

from __future__ import annotations

import argparse

from lensgen.config import add_config_arguments

RL_HELP = """Post-train a pretrained model with DiffusionNFT (online RL on the forward process): each step the
old policy samples a group of images per prompt without CFG, a reward (the Shapes rubric judge, GenEval's
rule, a VLM judge over an OpenAI-compatible endpoint, or a weighted sum) scores them against the prompt's
rubric, and the policy trains on the NFT loss. Prompts come from `lensgen data rl-prompts`. Single process:
`lensgen rl --config configs/rl-shapes.yaml`; many GPUs: `torchrun --nproc_per_node 8 -m lensgen.cli rl
--config configs/rl-lens-3.8b.yaml`. Writes OUT/metrics.jsonl (rewards per rubric dimension, zero-variance
groups, KL, held-out ShapesEval every log.eval_every steps), OUT/tensorboard, OUT/checkpoints (resumable
with --resume) and OUT/final, a pipeline folder that samples CFG-free. With `optim.objective: backprop`
(configs/rl-backprop-shapes.yaml, the shipped Shapes model's second stage) each step instead samples one image
per prompt with the gradient kept through the sampler and ascends the Shapes judge's differentiable margins
(reward backpropagation; one process)."""


def cmd_rl(args: argparse.Namespace) -> int:
    from lensgen.rl.backprop import RewardBackpropTrainer
    from lensgen.rl.config import load_rl_config
    from lensgen.rl.trainer import NFTTrainer
    from lensgen.train.cli import config_overrides, run_trainer

    config = load_rl_config(args.config, config_overrides(args))
    trainer = RewardBackpropTrainer if config.optim.objective == "backprop" else NFTTrainer
    summary = run_trainer(trainer, config, args)
    if summary.get("export"):
        reward = summary["final"].get("reward_mean")
        reward = f"{reward:.3f}" if reward is not None else "not logged"
        if summary["steps_this_run"] == 0:
            print(f"nothing left to train: the run is at step {summary['steps']} of {summary['steps']}; last "
                  f"reward {reward}; model (exported again): {summary['export']}")
        else:
            print(f"{summary['steps']} RL steps ({summary['steps_per_hour']:.1f} per hour); final reward "
                  f"{reward}; model: {summary['export']}")
    return 0


CLASSIFIER_HELP = """Train the latent classifier that `lensgen rl` can add to its KL pull as classifier guidance
(optim.kl_classifier): a small conv net that reads, from a Shapes model's noised latent tokens, each shape's
count, which (colour, shape) pairs are present and which relations hold. It trains on true training-split
scenes encoded by the model's own codec (held-out safe) and writes OUT/latent_classifier.safetensors, its config
and OUT/report.json (accuracy per noise level on scenes it did not see). About 16 minutes on 2 CPU cores."""


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from lensgen.rl.classifier_train import cmd_train_classifier as run

    return run(args)


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups[""].add_parser("rl", description=RL_HELP, help="RL post-training: DiffusionNFT with rubric rewards "
                              "(CPU or torchrun), or reward backpropagation")
    add_config_arguments(p, "configs/rl-shapes.yaml", required=True)
    p.add_argument("--out-dir", help="same as --set out_dir=...")
    p.add_argument("--steps", type=int, help="same as --set optim.steps=...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest if present")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rl)

    c = groups[""].add_parser("train-classifier", help="train the latent classifier for RL's guided KL pull",
                              description=CLASSIFIER_HELP)
    c.add_argument("--model", default="shapes-tiny-base",
                   help="a shipped model name or pipeline folder whose codec encodes the scenes (default "
                        "shapes-tiny-base; its RL and Turbo models share that codec)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--scenes", type=int, default=32768, help="true scenes to train on (default 32768)")
    c.add_argument("--steps", type=int, default=5000, help="optimiser steps (default 5000)")
    c.add_argument("--batch-size", type=int, default=256, help="noised latents per step (default 256)")
    c.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the one-cycle schedule")
    c.add_argument("--size", type=int, default=64, help="square scene size in pixels (default 64, ShapesEval's)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_train_classifier)
