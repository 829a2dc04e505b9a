"""Speed of our Lens transformer against diffusers' Flux2Transformer2DModel at the same width, depth and
token counts, measured in the same run. Prints a table and the ratios (diffusers time / ours: > 1 = we
are faster), outright and per parameter.

    python benchmarks/transformer_speed.py                       # CPU, shapes-tiny, fp32
    python benchmarks/transformer_speed.py --sweep               # CPU: candidate tiny presets, images/s
    python benchmarks/transformer_speed.py --device cuda --preset lens-3.8b --compile   # H100: full size, bf16

On CUDA the full-size run also reports per-call latency at batch 1 and 2 (CFG), fwd+bwd time,
achieved TFLOP/s and MFU against a bf16 8192^3 matmul measured in the same run. FLOPs count the
per-token active parameters (1.359B at Lens size: everything but modulation and embeddings, times
2 per multiply-add) plus attention 4 * layers * width * T^2 for T joint tokens; fwd+bwd = 3x fwd.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from lensgen.models.transformer import LensTransformer2DModel, LensTransformerConfig, preset


def build_ours(cfg: LensTransformerConfig, device, dtype):
    return LensTransformer2DModel(cfg).to(device=device, dtype=dtype)


def build_diffusers(cfg: LensTransformerConfig, device, dtype):
    from diffusers import Flux2Transformer2DModel

    head = cfg.attention_head_dim
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=cfg.in_channels, out_channels=cfg.in_channels, num_layers=cfg.num_layers,
        num_single_layers=0, attention_head_dim=head, num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.enc_hidden_dim * cfg.num_text_layers, mlp_ratio=cfg.mlp_dim / cfg.width,
        axes_dims_rope=(head // 4,) * 4, guidance_embeds=False,
    ).to(device=device, dtype=dtype)


def grid_for(tokens: int) -> tuple[int, int]:
    h = int(tokens**0.5)
    while tokens % h:
        h -= 1
    return h, tokens // h


def make_calls(cfg, batch, img_tokens, txt_tokens, device, dtype):
    """Closures running one forward of each model on identical inputs."""
    h, w = grid_for(img_tokens)
    img = torch.randn(batch, img_tokens, cfg.in_channels, device=device, dtype=dtype)
    txt = torch.randn(batch, txt_tokens, cfg.num_text_layers, cfg.enc_hidden_dim, device=device, dtype=dtype)
    sigma = torch.rand(batch, device=device)
    img_ids = torch.zeros(img_tokens, 4, device=device)
    img_ids[:, 1] = torch.arange(img_tokens, device=device) // w
    img_ids[:, 2] = torch.arange(img_tokens, device=device) % w
    txt_ids = torch.zeros(txt_tokens, 4, device=device)
    txt_ids[:, 3] = torch.arange(txt_tokens, device=device)
    txt_flat = txt.flatten(2)

    def ours(model):
        return model(img, txt, sigma, (h, w))

    def theirs(model):
        return model(hidden_states=img, encoder_hidden_states=txt_flat, timestep=sigma.to(dtype), img_ids=img_ids,
                     txt_ids=txt_ids, return_dict=False)[0]

    return ours, theirs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup=2, iters=5) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def train_step_fn(model, call, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        out = call(model)
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer_fn(model, call):
    def run():
        with torch.no_grad():
            call(model)

    return run


def compile_blocks(model):
    """Per-block torch.compile, applied from outside the model (as training's parallelize step does)."""
    blocks = model.transformer_blocks
    for block in blocks:
        block.compile()
    return model


def flops_per_call(cfg: LensTransformerConfig, batch: int, tokens: int) -> float:
    w, mlp = cfg.width, cfg.mlp_dim
    per_token_params = cfg.num_layers * (3 * w * w + w * w + 3 * w * mlp)  # qkv, out, swiglu
    return batch * (2 * per_token_params * tokens + 4 * cfg.num_layers * w * tokens**2)


def matmul_tflops(device, dtype, n=8192) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, warmup=3, iters=10)
    return 2 * n**3 / seconds / 1e12


def attention_context(backend: str | None):
    if not backend:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel(kinds[backend])


def compare(cfg, args, device, dtype) -> dict:
    """Train-step and sampling-call times of ours vs diffusers' Flux2 at the same shape. The two are timed
    in alternation (`--rounds` rounds, median of each), so drift in the machine's speed hits both alike."""
    names = ("lensgen", "diffusers-flux2")
    train_fns, infer_fns, params = {}, {}, {}
    for name, builder in zip(names, (build_ours, build_diffusers)):
        torch.manual_seed(0)
        model = builder(cfg, device, dtype)
        if args.compile:
            compile_blocks(model)
        pick = 0 if name == "lensgen" else 1
        train_call = make_calls(cfg, args.batch, args.image_tokens, args.text_tokens, device, dtype)[pick]
        infer_call = make_calls(cfg, args.infer_batch, args.image_tokens, args.text_tokens, device, dtype)[pick]
        train_fns[name] = train_step_fn(model, train_call, device)
        infer_fns[name] = infer_fn(model, infer_call)
        params[name] = sum(p.numel() for p in model.parameters()) / 1e6
    times: dict = {name: {"train": [], "infer": []} for name in names}
    for _ in range(args.rounds):
        for name in names:
            times[name]["train"].append(timed(train_fns[name], device, args.warmup, args.iters))
            times[name]["infer"].append(timed(infer_fns[name], device, args.warmup, args.iters))
    rows: dict = {}
    for name in names:
        train, infer = statistics.median(times[name]["train"]), statistics.median(times[name]["infer"])
        rows[name] = {"params_M": params[name], "train_step_s": train, "train_img_per_s": args.batch / train,
                      "sample_call_s": infer, "train_step_s_rounds": times[name]["train"]}
    rows["ratio_train"] = rows["diffusers-flux2"]["train_step_s"] / rows["lensgen"]["train_step_s"]
    rows["ratio_sample"] = rows["diffusers-flux2"]["sample_call_s"] / rows["lensgen"]["sample_call_s"]
    # Per parameter: parameters processed per second, ours over theirs (Lens's per-block modulation makes
    # ours larger at equal width, depth and per-token FLOPs).
    size = rows["lensgen"]["params_M"] / rows["diffusers-flux2"]["params_M"]
    rows["ratio_train_per_param"] = rows["ratio_train"] * size
    rows["ratio_sample_per_param"] = rows["ratio_sample"] * size
    return rows


def full_size_cuda(cfg, args, device) -> dict:
    """Lens size on a GPU: latency at batch 1 / 2 (CFG), fwd+bwd at batch 2, TFLOP/s and MFU."""
    dtype = torch.bfloat16
    peak = matmul_tflops(device, dtype)
    torch.manual_seed(0)
    model = build_ours(cfg, device, dtype).eval()
    if args.compile:
        compile_blocks(model)
    tokens = args.image_tokens + args.text_tokens
    out = {"bf16_matmul_tflops": peak}
    for batch in (1, 2):
        call, _ = make_calls(cfg, batch, args.image_tokens, args.text_tokens, device, dtype)
        secs = timed(infer_fn(model, call), device, args.warmup, args.iters)
        tflops = flops_per_call(cfg, batch, tokens) / secs / 1e12
        out[f"call_b{batch}_ms"] = secs * 1e3
        out[f"call_b{batch}_tflops"] = tflops
        out[f"call_b{batch}_mfu"] = tflops / peak
    model.train()
    call, _ = make_calls(cfg, 2, args.image_tokens, args.text_tokens, device, dtype)

    def fwd_bwd():
        call(model).float().square().mean().backward()

    secs = timed(fwd_bwd, device, args.warmup, args.iters)
    tflops = 3 * flops_per_call(cfg, 2, tokens) / secs / 1e12
    out.update({"fwd_bwd_b2_s": secs, "fwd_bwd_b2_tflops": tflops, "fwd_bwd_b2_mfu": tflops / peak,
                "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30})
    out["sample_20_steps_cfg_s_estimate"] = 20 * out["call_b2_ms"] / 1e3
    return out


def sweep(args, device) -> None:
    """CPU sizing of the Shapes preset: train images/s for candidate widths and depths."""
    print(f"{'width':>5} {'heads':>5} {'layers':>6} {'params_M':>8} {'img/s':>7}")
    for width, layers in [(192, 4), (192, 6), (256, 4), (256, 6), (256, 8), (320, 6)]:
        cfg = preset("shapes-tiny")
        cfg.num_attention_heads, cfg.num_layers = width // 64, layers
        torch.manual_seed(0)
        model = build_ours(cfg, device, torch.float32)
        call, _ = make_calls(cfg, args.batch, args.image_tokens, args.text_tokens, device, torch.float32)
        secs = timed(train_step_fn(model, call, device), device, 1, 3)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{width:>5} {width // 64:>5} {layers:>6} {params:>8.1f} {args.batch / secs:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="transformer preset (default: shapes-tiny on CPU, "
                                                        "lens-3.8b on CUDA)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 64 CPU, 2 CUDA)")
    parser.add_argument("--infer-batch", type=int, default=2, help="sampling-call batch (2 = CFG)")
    parser.add_argument("--image-tokens", type=int, default=None, help="default 64 (64 px) CPU, 4096 CUDA")
    parser.add_argument("--text-tokens", type=int, default=None, help="default 32 CPU, 256 CUDA")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours and diffusers' "
                                                               "(medians reported)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--attention", choices=["cudnn", "flash", "efficient", "math"], default=None)
    parser.add_argument("--sweep", action="store_true", help="CPU: images/s of candidate tiny presets")
    parser.add_argument("--skip-diffusers", action="store_true", help="full-size CUDA numbers only")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.preset = args.preset or ("lens-3.8b" if cuda else "shapes-tiny")
    args.batch = args.batch or (2 if cuda else 64)
    args.image_tokens = args.image_tokens or (4096 if cuda else 64)
    args.text_tokens = args.text_tokens or (256 if cuda else 32)
    cfg = preset(args.preset)
    dtype = torch.bfloat16 if cuda else torch.float32
    print(f"device={device} preset={args.preset} dtype={dtype} batch={args.batch} image_tokens={args.image_tokens} "
          f"text_tokens={args.text_tokens} compile={args.compile} threads={torch.get_num_threads()}")
    if args.sweep:
        sweep(args, device)
        return
    results: dict = {"args": vars(args)}
    with attention_context(args.attention):
        if cuda and args.preset == "lens-3.8b":
            results["full_size"] = full_size_cuda(cfg, args, device)
            for k, v in results["full_size"].items():
                print(f"  {k:32s} {v:10.3f}")
        if not args.skip_diffusers:
            results["compare"] = compare(cfg, args, device, dtype)
            cmp = results["compare"]
            print(f"{'model':18s} {'params_M':>9} {'train_step_s':>12} {'img/s':>8} {'sample_call_ms':>14}")
            for name in ("lensgen", "diffusers-flux2"):
                r = cmp[name]
                print(f"{name:18s} {r['params_M']:9.1f} {r['train_step_s']:12.3f} {r['train_img_per_s']:8.1f} "
                      f"{r['sample_call_s'] * 1e3:14.2f}")
            print(f"ratio (diffusers / lensgen): train {cmp['ratio_train']:.2f}x, sample call {cmp['ratio_sample']:.2f}x")
            print(f"per parameter: train {cmp['ratio_train_per_param']:.2f}x, "
                  f"sample call {cmp['ratio_sample_per_param']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
