"""`lensgen plan`: will this config train on N GPUs, at what batch, at how many FLOPs per step.

Prints the planner's table (lensgen.train.planner): per-GPU peak memory by category for each resolution,
batch and activation-checkpointing setting, the largest batch that fits, the model FLOPs of a step,
and what each way of running the frozen text encoder costs. `--json FILE` also writes it all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lensgen.config import add_config_arguments
from lensgen.errors import UserError

GIB = 2**30
# (the planner's list, repeated here so that `lensgen --help` does not import torch)
TEXT_ENCODER_MODES = ("sharded", "node-sharded", "replicated", "precomputed")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise UserError(f"{what}: expected positive integers, got {text!r}")
    return values


def plan_to_dict(plan) -> dict:
    def step(s):
        return None if s is None else {
            "resolution": s.resolution, "batch": s.batch, "activation_checkpointing": s.checkpointing,
            "peak_gib": s.peak / GIB, "memory_gib": {k: v / GIB for k, v in vars(s.memory).items()},
            "model_tflop_per_gpu": s.model_flops / 1e12}

    te = plan.text_cost
    return {"config": plan.config_path, "gpus": plan.world_size, "gpu_mem_gib": plan.gpu_mem_gib,
            "text_encoder_mode": plan.text_mode, "text_tokens": plan.text_tokens,
            "steps": [step(s) for s in plan.steps],
            "counted_tflop_per_sample": {str(r): f / 1e12 for r, f in plan.counted_flops_per_sample.items()},
            "largest": [{"resolution": r, "activation_checkpointing": c, "step": step(s)}
                        for (r, c), s in plan.largest.items()],
            "text_encoder": {"name": te.name, "params": te.params,
                             "resident_gib": {m: te.resident(m, plan.world_size) / GIB for m in TEXT_ENCODER_MODES},
                             "gathered_while_encoding_gib": te.transient("sharded") / GIB,
                             "features_mb_per_sample": te.features_bytes_per_sample(plan.text_tokens, plan.text_layers) / 1e6},
            "host_rss_gib": plan.host_rss_gib}


def format_plan(plan) -> str:
    g = lambda b: f"{b / GIB:6.1f}"  # noqa: E731
    lines = [f"{plan.config_path or 'config'} on {plan.world_size} GPUs x {plan.gpu_mem_gib:g} GiB; "
             f"text encoder {plan.text_cost.name}: {plan.text_mode}; {plan.text_tokens} text tokens",
             "per-GPU peak memory (GiB) of one training step",
             "   res  AC  batch  params  grads  optim    EMA  activ  text-enc    PEAK  fits  TFLOP/GPU/step"]
    capacity = plan.gpu_mem_gib * GIB
    for s in sorted(plan.steps, key=lambda s: (s.resolution, s.checkpointing, s.batch)):
        m = s.memory
        lines.append(f"{s.resolution:6d} {'yes' if s.checkpointing else ' no'} {s.batch:6d} {g(m.parameters)} "
                     f"{g(m.gradients)} {g(m.optimizer)} {g(m.ema)} {g(m.activations)} {g(m.text_encoder):>9} "
                     f"{g(s.peak)}  {'yes' if s.peak <= capacity else ' NO'}  {s.model_flops / 1e12:10.1f}")
    lines.append("largest batch per GPU that fits (simulated at that batch):")
    for (res, ckpt), s in sorted(plan.largest.items()):
        what = "none (batch 1 does not fit)" if s is None else f"{s.batch:3d}  (peak {s.peak / GIB:.1f} GiB)"
        lines.append(f"  {res:5d} px, activation checkpointing {'on ' if ckpt else 'off'}: {what}")
    lines.append("model FLOPs per sample (forward + backward, no recompute):")
    for res in sorted({s.resolution for s in plan.steps}):
        s = next(s for s in plan.steps if s.resolution == res)
        counted = plan.counted_flops_per_sample.get(res)
        extra = (f"; counted op by op by FlopCounterMode {counted / 1e12:.1f} (with the flash backward's "
                 f"recomputed QK^T)" if counted else "")
        lines.append(f"  {res:5d} px: {s.model_flops / s.batch / 1e12:.1f} TFLOP{extra}")
    te, w = plan.text_cost, plan.world_size
    lines += ["text encoder per GPU: "
              f"sharded {te.resident('sharded', w) / GIB:.1f} GiB (+{te.transient('sharded') / GIB:.1f} GiB gathered "
              f"while encoding); node-sharded {te.resident('node-sharded', w) / GIB:.1f} GiB (same +); replicated {te.resident('replicated', w) / GIB:.1f} GiB; precomputed 0 GiB "
              f"(+{te.features_bytes_per_sample(plan.text_tokens, plan.text_layers) / 1e6:.1f} MB of features per sample on disk)",
              f"  encoding {plan.text_tokens} tokens (plus the chat template's): "
              f"{te.forward_flops(plan.text_tokens) / 1e12:.2f} TFLOP "
              f"({te.params / 1e9:.2f}B parameters, {te.active_params_per_token / 1e9:.2f}B active per token)",
              f"planning used {plan.host_rss_gib:.2f} GiB of host memory (peak RSS): nothing was materialised"]
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    from lensgen.train.config import load_config
    from lensgen.train.planner import make_plan

    config = load_config(args.config, args.set)
    resolutions = _int_list(args.resolutions, "--resolutions") if args.resolutions else None
    batches = tuple(_int_list(args.batches, "--batches"))
    ckpt = {"both": (False, True), "on": (True,), "off": (False,)}[args.checkpointing]
    if args.gpu_mem <= 0:
        raise UserError(f"--gpu-mem must be positive GiB, got {args.gpu_mem}")

    def progress(res, on, step):
        if not args.quiet:
            best = "nothing fits" if step is None else f"batch {step.batch}"
            print(f"  planned {res} px, checkpointing {'on' if on else 'off'}: {best}", file=sys.stderr, flush=True)

    text_mode = args.text_encoder or {"all": "sharded", "node": "node-sharded"}.get(
        config.system.text_encoder_fsdp, "replicated")
    plan = make_plan(config, args.gpus, args.gpu_mem, resolutions, batches, ckpt, text_mode,
                     args.text_tokens, config_path=args.config, count_flops=not args.no_flop_count,
                     progress=progress)
    print(format_plan(plan))
    if args.json:
        from lensgen.io import atomic_write_json

        atomic_write_json(Path(args.json), plan_to_dict(plan))
    return 0


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups[""].add_parser(
        "plan", help="per-GPU memory and FLOPs of a training step on N GPUs, simulated on this CPU",
        description="Simulate one training step of the config's model on N GPUs without allocating it "
                    "(FakeTensorMode, a fake process group, FSDP2 as the trainer applies it) and print the "
                    "per-GPU peak memory by category (parameters, gradients, optimiser, EMA, activations, text "
                    "encoder) for each resolution, two batch sizes and activation checkpointing off and on; "
                    "the largest batch per GPU that fits (memory is linear in the batch; the predicted batch "
                    "is then simulated to confirm it); and the model FLOPs of a step. Example: "
                    "`lensgen plan --config configs/lens-3.8b.yaml --gpus 8 --gpu-mem 80`. Each simulated step "
                    "of lens-3.8b takes about two minutes of CPU; the default plan (3 resolutions x 2 settings) "
                    "simulates 12 to 18 steps: narrow it with --resolutions and --checkpointing.",
    )
    add_config_arguments(p, "configs/lens-3.8b.yaml", required=True)
    p.add_argument("--gpus", type=int, required=True, help="world size: GPUs sharing the model (FSDP2)")
    p.add_argument("--gpu-mem", type=float, required=True, metavar="GIB", help="memory per GPU in GiB (e.g. 80)")
    p.add_argument("--resolutions", help="square image sides in px, comma-separated (default: the config's "
                                         "data.bases, e.g. 512,768,1024)")
    p.add_argument("--batches", default="1,2", help="the two batch sizes per GPU simulated at each resolution "
                                                    "(default 1,2)")
    p.add_argument("--checkpointing", choices=("both", "on", "off"), default="both",
                   help="activation checkpointing settings to plan (default both)")
    p.add_argument("--text-encoder", choices=TEXT_ENCODER_MODES,
                   help="how the frozen text encoder runs: FSDP2-sharded across all GPUs, sharded within each node "
                        "of 8 and replicated across nodes, a full copy per GPU, or features precomputed to disk "
                        "ahead of training (nothing on the GPU). Default: what the config's "
                        "system.text_encoder_fsdp says (all, node, false)")
    p.add_argument("--text-tokens", type=int, help="text tokens per sample (default: the encoder's max_length, "
                                                   "the worst case)")
    p.add_argument("--no-flop-count", action="store_true",
                   help="skip the FlopCounterMode pass per resolution (model FLOPs still come from the formula)")
    p.add_argument("--json", metavar="FILE", help="also write the plan as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_plan)
