"""The planner's memory prediction against a real training step on this machine's device, and the step's speed.

Why: `lensgen plan` answers "does it fit, at what batch" without a GPU, and a test holds it within 10 % of a
real CPU step; on a GPU the same step also meets the CUDA caching allocator, cuDNN attention and fused AdamW.
This runs, in one process, the step the planner simulates (the model built on the meta device, FSDP2 over one
rank, the config's mixed precision and activation checkpointing, AdamW, the fp32 EMA, precomputed text
features) on real tensors, and prints plan against measurement by category, then seconds per step,
TFLOP/s and MFU against the device's measured bf16 matmul rate.

    python benchmarks/plan_check.py --config configs/lens-3.8b.yaml --device cuda --resolution 1024 --batch 2
    python benchmarks/plan_check.py --config configs/lens-3.8b.yaml --device cuda --resolution 1024 --batch 2 \\
        --set 'model.overrides={num_layers: 24}'     # a card that cannot hold all 48 blocks' optimiser state
    python benchmarks/plan_check.py --config configs/shapes-tiny.yaml --resolution 64 --batch 8   # on this CPU

One GPU holds every shard: lens-3.8b's fp32 weights, gradients, AdamW moments and EMA are ~82 GB before
activations (an H200 holds them; an 80 GB card needs fewer blocks, same width). Measured: the tracker's
count of live storages at the step's peak (torch's MemTracker, as the planner's test uses) and, on CUDA,
the allocator's own peak (`torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from lensgen.compute import mfu
from lensgen.config import add_config_arguments
from lensgen.train.config import load_config
from lensgen.train.ema import EMA
from lensgen.train.parallel import DistInfo
from lensgen.train.planner import GIB, Planner, StepInputs, create_optimizer_state, measure_step, train_step
from lensgen.train.trainer import build_optimizer, build_sharded_transformer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transformer_speed import matmul_tflops, sync  # noqa: E402  (a sibling benchmark)

CATEGORIES = ("parameters", "gradients", "optimizer", "ema", "activations")


def join_single_rank(device: torch.device) -> None:
    """A one-rank process group (nccl on CUDA, gloo on a CPU): FSDP2 needs one to shard over."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)


def check(config_path: str, overrides: list[str], device: str, resolution: int, batch: int, checkpointing: bool,
          text_tokens: int | None, steps: int, peak_tflops: float | None) -> dict:
    cfg = load_config(config_path, ["system.fsdp=true", f"system.activation_checkpointing={checkpointing}",
                                    "system.compile=false", f"system.device={device}", *overrides])
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    bf16 = cuda and cfg.system.precision != "fp32"
    planner = Planner(cfg, 1, text_tokens, text_encoder="precomputed", bf16=bf16)
    start = time.perf_counter()
    plan = planner.plan_step(resolution, batch, checkpointing)  # before the real group: it makes a fake one
    plan_s = time.perf_counter() - start

    join_single_rank(dev)
    try:
        info = DistInfo(rank=0, world_size=1, device=dev)
        torch.manual_seed(0)
        model = build_sharded_transformer(cfg.model, cfg.system, info, bf16)
        optimizer = build_optimizer(model, cfg.optim, cuda)
        create_optimizer_state(model, optimizer)
        ema = EMA(model, cfg.optim.ema_decay)
        mc = planner.model_config
        inputs = StepInputs.random(batch, planner.grid(resolution), mc.in_channels, planner.text_tokens,
                                   mc.num_text_layers, mc.enc_hidden_dim, torch.bfloat16 if bf16 else torch.float32,
                                   device=dev)
        train_step(model, optimizer, ema, inputs, cfg.optim.grad_clip)  # warm-up: lazy state, kernels chosen
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        memory, total = measure_step(model, optimizer, ema, inputs, cfg.optim.grad_clip)
        allocator_peak = torch.cuda.max_memory_allocated() if cuda else None
        sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            train_step(model, optimizer, ema, inputs, cfg.optim.grad_clip)
        sync(dev)
        step_s = (time.perf_counter() - start) / steps
    finally:
        dist.destroy_process_group()

    peak = peak_tflops or (matmul_tflops(dev, torch.bfloat16) if cuda else None)
    tflops = plan.model_flops / step_s / 1e12
    return {
        "config": config_path, "overrides": overrides, "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "resolution": resolution, "batch": batch, "checkpointing": checkpointing, "bf16": bf16,
        "parameters_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "planned": {**{c: getattr(plan.memory, c) for c in CATEGORIES}, "total": plan.peak},
        "measured": {**{c: getattr(memory, c) for c in CATEGORIES}, "total": total},
        "allocator_peak": allocator_peak, "plan_vs_measured": plan.peak / total,
        "plan_seconds": plan_s, "step_seconds": step_s, "images_per_second": batch / step_s,
        "model_tflop_per_step": plan.model_flops / 1e12, "achieved_tflops": tflops,
        "matmul_peak_tflops": peak, "mfu": mfu(plan.model_flops, step_s, peak) if peak else None,
    }


def report(r: dict) -> str:
    gib = lambda b: f"{b / GIB:9.3f}" if b is not None else f"{'-':>9}"  # noqa: E731
    lines = [f"{' '.join([r['config'], *r['overrides']])} on {r['device']}: {r['resolution']} px, batch {r['batch']}, "
             f"activation checkpointing {'on' if r['checkpointing'] else 'off'}, "
             f"{'bf16' if r['bf16'] else 'fp32'}, {r['parameters_M']:.1f}M parameters, one rank",
             f"{'GiB':<12} {'planned':>9} {'measured':>9}"]
    for c in (*CATEGORIES, "total"):
        lines.append(f"{c:<12} {gib(r['planned'][c])} {gib(r['measured'][c])}")
    if r["allocator_peak"] is not None:
        lines.append(f"{'allocator':<12} {'':>9} {gib(r['allocator_peak'])}   (torch.cuda.max_memory_allocated)")
    verdict = "within" if abs(r["plan_vs_measured"] - 1) <= 0.10 else "OUTSIDE"
    lines.append(f"plan / measured: {r['plan_vs_measured']:.3f} ({verdict} 10 %); planning took {r['plan_seconds']:.1f} s")
    line = (f"step {r['step_seconds']:.3f} s ({r['images_per_second']:.2f} images/s), "
            f"{r['model_tflop_per_step']:.2f} model TFLOP per step, {r['achieved_tflops']:.2f} TFLOP/s")
    if r["mfu"] is not None:
        line += f", MFU {100 * r['mfu']:.1f} % of {r['matmul_peak_tflops']:.0f} TFLOP/s (measured matmul)"
    lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, "configs/lens-3.8b.yaml", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=1024, help="square side in pixels")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--checkpointing", choices=("on", "off"), default="on", help="activation checkpointing")
    parser.add_argument("--text-tokens", type=int, default=None, help="default: the text encoder's max_length")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the measured one")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the MFU's denominator (default on CUDA: a bf16 8192^3 matmul timed on the device)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")  # the model output's view: not modified
    if args.threads:
        torch.set_num_threads(args.threads)
    result = check(args.config, args.set, args.device, args.resolution, args.batch, args.checkpointing == "on",
                   args.text_tokens, max(1, args.steps), args.peak_tflops)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
