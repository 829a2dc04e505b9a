"""Deterministic ODE solvers for the velocity field, and classifier-free guidance.

Euler: v = eps - x0 points from data to noise, so stepping sigma down by d moves x by d * v:
x_{next} = x + (sigma_next - sigma) * v. DPM-Solver++(2M) (Lu et al. 2022) steps in the data
prediction x0 = x - sigma * v with a second-order multistep correction; with alpha = 1 - sigma and
lambda = log(alpha / sigma), h = lambda_next - lambda:

    x_next = (sigma_next / sigma) x + alpha_next (1 - e^-h) D,   D = (1 + 1/2r) x0 - (1/2r) x0_prev,

r = h_prev / h (first order, D = x0, on the first step and onto sigma = 0, where its first order is
Euler exactly). CFG runs [cond; uncond] as one batch, combines u + g * (c - u), then rescales every
token of the result to the norm of the conditional prediction, which keeps high guidance from blowing
up the velocity's magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

SOLVERS = ("euler", "dpm2")

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
    return _euler(velocity_fn, noise, sigmas, progress)


def _euler(velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, progress: bool) -> torch.Tensor:
    x = noise
    batch = x.shape[0]
    steps = range(len(sigmas) - 1)
    for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity_fn(x, torch.full((batch,), sigma, device=x.device, dtype=torch.float32))
        x = x + (sigma_next - sigma) * v.to(x.dtype)
    return x


@torch.no_grad()
def dpm_solver_2m_sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) from sigmas[0] to sigmas[-1] (0: clean), in the data prediction x0 = x - sigma v."""
    return _dpm2(velocity_fn, noise, sigmas, progress)


def _dpm2(velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, progress: bool) -> torch.Tensor:
    x = noise
    batch = x.shape[0]
    x0_prev, h_prev = None, None
    for i in tqdm(range(len(sigmas) - 1), desc="sampling", disable=not progress, leave=False):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity_fn(x, torch.full((batch,), sigma, device=x.device, dtype=torch.float32))
        x0 = x - sigma * v.to(x.dtype)
        if sigma_next == 0.0:
            x = x0  # onto clean data: the first-order step lands on the prediction itself
            break
        h = _log_snr(sigma_next) - _log_snr(sigma)
        if x0_prev is None or not math.isfinite(h_prev) or not math.isfinite(h):
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (sigma_next / sigma) * x + (1 - sigma_next) * -math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


def _log_snr(sigma: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma; -inf at pure noise."""
    return -math.inf if sigma >= 1.0 else math.log1p(-sigma) - math.log(sigma)


def sample(velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, solver: str = "euler",
           progress: bool = False) -> torch.Tensor:
    """Integrate with the named deterministic solver (`SOLVERS`), without gradient."""
    with torch.no_grad():
        return integrate(velocity_fn, noise, sigmas, solver, progress)


def integrate(velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, solver: str = "euler",
              progress: bool = False) -> torch.Tensor:
    """`sample` under the caller's grad mode: with gradient enabled, the result is differentiable through every
    step whose velocity is (reward backpropagation, `lensgen.rl.backprop`)."""
    if solver == "euler":
        return _euler(velocity_fn, noise, sigmas, progress)
    if solver == "dpm2":
        return _dpm2(velocity_fn, noise, sigmas, progress)
    raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
