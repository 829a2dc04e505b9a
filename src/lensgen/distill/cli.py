"""`lensgen distill`: a few-step CFG-free student (Lens-Turbo) from a teacher pipeline folder."""

from __future__ import annotations

import argparse

from lensgen.config import add_config_arguments

DISTILL_HELP = """Distil a teacher pipeline into a student that samples in a few steps without CFG (Lens-Turbo):
decoupled DMD (distribution matching as the regulariser, CFG augmentation as the engine; equal weights are
DMD2), SenseFlow's implicit distribution alignment and intra-segment guidance, and a GAN on the fake score's
features with an approximate R1 penalty; each term has its own weight in the config's `loss` section (0
switches it off). Single process: `lensgen distill --config configs/distill-shapes.yaml`; many GPUs:
`torchrun --nproc_per_node 8 -m lensgen.cli distill --config ...`. Writes OUT/metrics.jsonl, OUT/tensorboard,
OUT/checkpoints (resumable with --resume) and OUT/final, a pipeline folder whose defaults are the turbo preset
(`lensgen generate --model OUT/final` samples in turbo.steps steps at CFG 1)."""


def cmd_distill(args: argparse.Namespace) -> int:
    from lensgen.distill.config import load_distill_config
    from lensgen.distill.turbo import TurboTrainer
    from lensgen.train.cli import config_overrides, run_trainer

    summary = run_trainer(TurboTrainer, load_distill_config(args.config, config_overrides(args)), args)
    if summary.get("export") and summary["steps_this_run"] == 0:
        print(f"nothing left to train: the run is at step {summary['steps']} of {summary['steps']}; "
              f"model (exported again): {summary['export']}")
    elif summary.get("export"):
        print(f"{summary['steps']} distillation steps ({summary['steps_per_hour']:.1f} per hour); "
              f"model: {summary['export']}")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups[""].add_parser("distill", help="few-step distillation without CFG (Lens-Turbo; CPU or torchrun)",
                              description=DISTILL_HELP)
    add_config_arguments(p, "configs/distill-shapes.yaml", required=True)
    p.add_argument("--out-dir", help="same as --set out_dir=...")
    p.add_argument("--steps", type=int, help="same as --set optim.steps=...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest if present")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill)
