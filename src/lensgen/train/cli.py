"""`lensgen train`: one command for the laptop-sized Shapes model and for lens-3.8b under torchrun."""

from __future__ import annotations

import argparse

from lensgen.config import add_config_arguments


def config_overrides(args: argparse.Namespace, steps_field: str = "optim.steps") -> list:
    """The --set overrides, then the --out-dir and --steps shortcuts the training commands share."""
    shortcuts = {"out_dir": args.out_dir, steps_field: args.steps}
    return [*args.set, *((k, v) for k, v in shortcuts.items() if v is not None)]


def run_trainer(trainer_class, config, args: argparse.Namespace) -> dict:
    """Build and run a trainer (pretraining, RL, distillation), leaving the process group either way: cleanly
    after the run, at once on an error (so the other ranks stop too)."""
    from lensgen.train.parallel import shutdown_distributed

    try:
        summary = trainer_class(config, resume=args.resume, progress=not args.quiet).run()
    except BaseException:
        shutdown_distributed(clean=False)
        raise
    shutdown_distributed()
    return summary


def cmd_train(args: argparse.Namespace) -> int:
    from lensgen.train.config import load_config
    from lensgen.train.trainer import Trainer

    summary = run_trainer(Trainer, load_config(args.config, config_overrides(args)), args)
    if summary.get("export"):
        print(f"trained {summary['steps']} steps in {summary['wall_s']:.0f} s "
              f"({summary['images_per_s']:.1f} images/s); EMA pipeline: {summary['export']}")
    return 0


def cmd_train_vae(args: argparse.Namespace) -> int:
    from lensgen.config import load_config
    from lensgen.train import decoder_distill, shapes_vae

    config = load_config(shapes_vae.VAETrainConfig, args.config, config_overrides(args, "steps"))
    run = decoder_distill.run if config.teacher else shapes_vae.run
    summary = run(config, resume=args.resume, progress=not args.quiet)
    rec = summary["reconstruction"]
    print(f"trained {summary['steps']} steps ({summary['images_per_s']:.1f} images/s); reconstruction of "
          f"{rec['images']} scenes: PSNR {rec['psnr_db']:.1f} dB, judge agreement {rec['judge_agreement']:.3f}; "
          f"codec folder: {summary['final']}")
    if "teacher" in rec:
        t = rec["teacher"]
        print(f"against the teacher's decoder on its tokens: PSNR {t['psnr_db']:.1f} dB, judge agreement "
              f"{t['judge_agreement']:.3f}")
    if "sampled" in rec:
        t = rec["sampled"]
        print(f"against the teacher's decoder on {t['images']} fresh latents of {config.latent_model}: "
              f"PSNR {t['psnr_db']:.1f} dB, judge agreement {t['judge_agreement']:.3f}")
    return 0


def cmd_train_signs(args: argparse.Namespace) -> int:
    from lensgen.config import load_config
    from lensgen.train import sign_writing

    summary = sign_writing.run(load_config(sign_writing.SignTrainConfig, args.config, config_overrides(args, "steps")),
                               resume=args.resume, progress=not args.quiet)
    loss = summary["last_sign_loss"]
    print(f"trained {summary['steps']} steps ({summary['steps_per_hour']:.0f} an hour)"
          + (f"; sign loss {loss:.4f} over the last 100" if loss is not None else "")
          + f"; pipeline: {summary['final']} (score it: lensgen eval shapes --model {summary['final']})")
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups[""].add_parser(
        "train", help="pretrain with mixed-resolution flow matching (CPU, GPU, or torchrun + FSDP2)",
        description="Train the Lens transformer with rectified flow on mixed-resolution buckets. "
                    "Single process: `lensgen train --config configs/shapes-tiny.yaml`. Many GPUs: "
                    "`torchrun --nproc_per_node 8 -m lensgen.cli train --config configs/lens-3.8b.yaml`. "
                    "Writes OUT/metrics.jsonl, OUT/tensorboard, OUT/checkpoints (resumable with --resume) "
                    "and exports the EMA weights to OUT/final, a folder `lensgen generate --model` loads.",
    )
    add_config_arguments(p, "configs/shapes-tiny.yaml", required=True)
    p.add_argument("--out-dir", help="same as --set out_dir=...")
    p.add_argument("--steps", type=int, help="same as --set optim.steps=...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest if present")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    v = groups[""].add_parser(
        "train-vae", help="train the Shapes VAE (a small AutoencoderKLFlux2) that Shapes models can denoise in",
        description="Train a small FLUX.2-class VAE (diffusers' AutoencoderKLFlux2: 4x down, 4 latent channels, "
                    "2x2 patches = 8 px per 16-value token) on Shapes scenes rendered on the fly at the bucket "
                    "sizes. Writes OUT/metrics.jsonl, OUT/checkpoint.pt (resumable with --resume), OUT/final (a "
                    "codec folder: use it as `model.codec: {backend: flux2-vae, path: OUT/final}`) and "
                    "OUT/summary.json with the reconstruction report (PSNR, judge agreement). With "
                    "`--set teacher=CODEC_DIR --set 'decoder_channels=[16, 16, 32]'` it distils a lighter decoder "
                    "for that VAE instead (its encoder and latent statistics kept, so models trained on it decode "
                    "through the new one unchanged); `latent_model` and `latent_prompts` add latents that model "
                    "samples to every batch: configs/shapes-vae-light-decoder.yaml.",
    )
    add_config_arguments(v, "configs/shapes-vae.yaml")
    v.add_argument("--out-dir", help="same as --set out_dir=... (default runs/shapes-vae)")
    v.add_argument("--steps", type=int, help="same as --set steps=... (default 1600)")
    v.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_train_vae)

    s = groups[""].add_parser(
        "train-signs", help="teach a Shapes model to write a sign's word by copying a drawing of it in place",
        description="Give a pipeline's transformer a sign layout input (per image token, the pixels of the sign "
                    "drawn where it goes: a white board with the word in the sign font) and train it to copy it: "
                    "flow matching on sign scenes of training words, with scenes without a sign distilled from "
                    "the starting model so every other prompt samples as before. The exported pipeline plans a "
                    "sign for every prompt that quotes a word and writes any word, held-out ones too. Writes "
                    "OUT/metrics.jsonl, OUT/checkpoint.pt (resumable with --resume), OUT/final (a pipeline "
                    "folder) and OUT/summary.json.",
    )
    add_config_arguments(s, "configs/shapes-signs.yaml")
    s.add_argument("--out-dir", help="same as --set out_dir=... (default runs/train-signs)")
    s.add_argument("--steps", type=int, help="same as --set steps=... (default 1500)")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train_signs)
