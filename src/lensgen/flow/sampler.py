"""Euler sampling of the velocity field with classifier-free guidance.

v = eps - x0 points from data to noise, so stepping sigma down by d moves x by d * v:
x_{next} = x + (sigma_next - sigma) * v. CFG runs [cond; uncond] as one batch, combines
u + g * (c - u), then rescales every token of the result to the norm of the conditional
prediction, which keeps high guidance from blowing up the velocity's magnitude.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

# velocity_fn(x (B, N, C), sigma (B,)) -> v (B, N, C); conditioning is bound by the caller.
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided_velocity(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """u + g (c - u), each token rescaled to the conditional prediction's norm (over channels)."""
    guided = uncond + scale * (cond - uncond)
    cond_norm = cond.norm(dim=-1, keepdim=True)
    guided_norm = guided.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return guided * (cond_norm / guided_norm)


def cfg_velocity_fn(model_fn: VelocityFn, scale: float) -> VelocityFn:
    """Wrap a model that takes the doubled [cond; uncond] batch into a guided velocity function.

    With scale == 1 the guided velocity equals the conditional one, so only the cond half runs;
    model_fn must then accept the conditional batch alone (see `LensPipeline`)."""

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        both = model_fn(torch.cat([x, x]), torch.cat([sigma, sigma]))
        cond, uncond = both.chunk(2)
        return guided_velocity(cond, uncond, scale)

    return fn


@torch.no_grad()
def euler_sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate from sigmas[0] (noise) to sigmas[-1] (0: clean). noise (B, N, C)."""
    x = noise
    batch = x.shape[0]
    steps = range(len(sigmas) - 1)
    for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity_fn(x, torch.full((batch,), sigma, device=x.device, dtype=torch.float32))
        x = x + (sigma_next - sigma) * v.to(x.dtype)
    return x
