"""Compute accounting: the model FLOPs of a training step, MFU, and GPU-hours made comparable across cards.

Why: "how fast" only means something against what the hardware could do. MFU (model FLOPs utilisation)
is the FLOPs the model needs per step (forward + backward, recomputation by activation checkpointing
not counted) over the seconds the step took times the devices' peak dense bf16 rate. The same peak
rates turn GPU-hours on different cards into one unit (peak FLOPs the hours could deliver), which is how
Lens states its budget: 192K A100-hours against Z-Image's 314K H800-hours is 19.3 % of the compute.

`forward_flops` is exact for the matmuls and attention of `LensTransformer2DModel` (the only work that
counts; norms and elementwise ops are a rounding error): a test holds it equal to what
`torch.utils.flop_counter.FlopCounterMode` counts on a real step. The transformer config is read by
attribute (width, mlp_dim, ...), so this module needs no model code.
"""

from __future__ import annotations

from dataclasses import dataclass

from lensgen.errors import UserError

# Peak dense bf16 tensor-core rates (TFLOP/s, no sparsity), from the vendors' data sheets (SXM parts).
PEAK_BF16_TFLOPS = {
    "a100": 312.0,
    "h100": 989.0,
    "h800": 989.0,
    "h200": 989.0,
}
TIMESTEP_CHANNELS = 256  # the sinusoid width feeding time_text_embed


def flop_counter():
    """A `torch.utils.flop_counter.FlopCounterMode` that also counts attention on CPU. It knows the CUDA
    attention kernels only; on CPU SDPA runs `_scaled_dot_product_flash_attention_for_cpu`, the same work,
    counted here with torch's own formulas."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})


def device_peak_tflops(device: str | float) -> float:
    """A device name from PEAK_BF16_TFLOPS (case-insensitive) or a number of TFLOP/s."""
    if isinstance(device, int | float):
        if device <= 0:
            raise UserError(f"peak TFLOP/s must be positive, got {device}")
        return float(device)
    key = device.strip().lower()
    if key not in PEAK_BF16_TFLOPS:
        try:
            return device_peak_tflops(float(key))
        except ValueError:
            raise UserError(f"unknown device {device!r}: give a peak TFLOP/s number or one of "
                            f"{', '.join(PEAK_BF16_TFLOPS)}") from None
    return PEAK_BF16_TFLOPS[key]


@dataclass(frozen=True)
class StepShape:
    """One micro-batch as the transformer sees it: batch size, padded image tokens, padded text tokens."""

    batch: int
    image_tokens: int
    text_tokens: int


def forward_flops(config, shape: StepShape) -> int:
    """Matmul + attention FLOPs of one forward pass (2 per multiply-add), as the batch is padded.

    config: a LensTransformerConfig (width, mlp_dim, num_layers, in_channels, enc_hidden_dim, ...)."""
    w, h = config.width, config.mlp_dim
    n, s, b = shape.image_tokens, shape.text_tokens, shape.batch
    t = n + s
    text_in = config.enc_hidden_dim * config.num_text_layers
    out_channels = config.patch_size**2 * config.out_channels
    per_block = (2 * t * 3 * w * w  # fused QKV, both streams
                 + 2 * 2 * t * t * w  # QK^T and AV over the joint sequence
                 + 2 * t * w * w  # to_out.0 / to_add_out
                 + 2 * t * 3 * w * h  # SwiGLU w1, w3, w2
                 + 2 * 2 * w * 6 * w)  # img_mod, txt_mod on the time embedding (one row per sample)
    outside = (2 * (TIMESTEP_CHANNELS * w + w * w)  # timestep MLP
               + 2 * s * text_in * w  # txt_in
               + 2 * n * config.in_channels * w  # img_in
               + 2 * w * 2 * w  # norm_out.linear
               + 2 * n * w * out_channels)  # proj_out
    return b * (config.num_layers * per_block + outside)


def attention_flops(config, shape: StepShape) -> int:
    """The forward's QK^T and AV FLOPs (part of `forward_flops`)."""
    t = shape.image_tokens + shape.text_tokens
    return shape.batch * config.num_layers * 2 * 2 * t * t * config.width


def training_flops(config, shape: StepShape) -> int:
    """Model FLOPs of forward + backward: the backward does twice the forward's work, except where
    autograd has nothing to do: the input gradients of `img_in` and of the timestep MLP (noisy tokens and
    the sinusoid are not trained; `txt_in`'s input is, through `txt_norm`), and the last block's text
    stream after attention, whose output feeds nothing (`to_add_out` and `txt_mlp` get no gradient).

    Implementation work is not model work: a flash-attention backward also recomputes QK^T (torch's
    FlopCounterMode counts it: + attention_flops / 2), and activation checkpointing reruns the forward."""
    w, h, b, s = config.width, config.mlp_dim, shape.batch, shape.text_tokens
    no_input_grad = 2 * b * (shape.image_tokens * config.in_channels * w + TIMESTEP_CHANNELS * w)
    dead_text_tail = 2 * (2 * b * s * w * w + 2 * b * s * 3 * w * h)  # backward of 2x their forward, skipped
    return 3 * forward_flops(config, shape) - no_input_grad - dead_text_tail


def mfu(flops: float, seconds: float, peak_tflops: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: `flops` done by `devices` cards in `seconds`, over their peak."""
    if seconds <= 0 or devices <= 0:
        raise ValueError(f"mfu needs positive seconds and devices, got {seconds}, {devices}")
    return flops / (seconds * devices * device_peak_tflops(peak_tflops) * 1e12)


def peak_flops_of(gpu_hours: float, device: str | float) -> float:
    """The FLOPs `gpu_hours` on `device` could deliver at its peak dense bf16 rate."""
    return gpu_hours * 3600.0 * device_peak_tflops(device) * 1e12


def relative_compute(gpu_hours: float, device: str | float, other_hours: float, other_device: str | float) -> float:
    """Budget A as a fraction of budget B, both weighted by their cards' peak rates.

    Lens vs Z-Image: relative_compute(192e3, "a100", 314e3, "h800") = 0.193."""
    return peak_flops_of(gpu_hours, device) / peak_flops_of(other_hours, other_device)


__all__ = ["PEAK_BF16_TFLOPS", "StepShape", "attention_flops", "device_peak_tflops", "forward_flops", "mfu", "peak_flops_of",
           "relative_compute", "training_flops"]
