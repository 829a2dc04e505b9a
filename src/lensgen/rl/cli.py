"""`lensgen rl`: DiffusionNFT post-training of a pretrained pipeline folder."""

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
with --resume) and OUT/final, a pipeline folder that samples CFG-free."""


def cmd_rl(args: argparse.Namespace) -> int:
    from lensgen.rl.config import load_rl_config
    from lensgen.rl.trainer import NFTTrainer
    from lensgen.train.cli import config_overrides, run_trainer

    summary = run_trainer(NFTTrainer, load_rl_config(args.config, config_overrides(args)), args)
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


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups[""].add_parser("rl", help="RL post-training with DiffusionNFT (rubric rewards, CPU or torchrun)",
                              description=RL_HELP)
    add_config_arguments(p, "configs/rl-shapes.yaml", required=True)
    p.add_argument("--out-dir", help="same as --set out_dir=...")
    p.add_argument("--steps", type=int, help="same as --set optim.steps=...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest if present")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rl)
