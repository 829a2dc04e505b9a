"""Noise levels for sampling: FLUX.2's resolution- and step-aware shifted schedule.

Rectified flow: x_t = (1 - sigma) * x0 + sigma * eps, sigma = 1 is pure noise. Start from
linspace(1, 1/N, N) and shift every sigma towards noise by an amount mu that grows with the image's
token count L (large images need more steps at high noise) and falls with the step count N:

    m10  = 8.73809524e-5 * L + 1.89833333     (the fitted mu at 10 steps)
    m200 = 1.6927e-4     * L + 0.45666666     (the fitted mu at 200 steps)
    mu   = the line through (10, m10) and (200, m200) at N;  mu = m200 when L > 4300
    sigma' = e^mu / (e^mu + (1/sigma - 1))
"""

from __future__ import annotations

import math

import torch


def empirical_mu(image_tokens: int, num_steps: int) -> float:
    m200 = 1.6927e-4 * image_tokens + 0.45666666
    if image_tokens > 4300:
        return m200
    m10 = 8.73809524e-5 * image_tokens + 1.89833333
    slope = (m200 - m10) / 190.0
    return m200 + slope * (num_steps - 200)


def shift_sigma(sigma: torch.Tensor, mu: float) -> torch.Tensor:
    """sigma' = e^mu / (e^mu + (1/sigma - 1)), written so that 1 maps to exactly 1 and 0 to 0."""
    return 1.0 / (1.0 + math.exp(-mu) * (1.0 / sigma - 1.0))


def train_mu(image_tokens: int) -> float:
    """The shift training draws its noise levels with (`train.objective`): FLUX.2's fitted mu at 200 steps."""
    return 1.6927e-4 * image_tokens + 0.45666666


def schedule_mu(schedule: str | float, image_tokens: int, num_steps: int) -> float:
    """mu for a named schedule: "empirical" (FLUX.2's fit for N steps, made for 256+ px images), "train"
    (the shift the model was trained with, whatever N), or a fixed number."""
    if schedule == "empirical":
        return empirical_mu(image_tokens, num_steps)
    if schedule == "train":
        return train_mu(image_tokens)
    if isinstance(schedule, int | float) and not isinstance(schedule, bool):
        return float(schedule)
    raise ValueError(f"schedule must be 'empirical', 'train' or a number (mu), got {schedule!r}")


def sampling_sigmas(num_steps: int, image_tokens: int, shift: bool = True,
                    schedule: str | float = "empirical") -> torch.Tensor:
    """(num_steps + 1,) float64 noise levels from 1 down to 0 (the last entry is the clean image)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    sigmas = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    if shift:
        sigmas = shift_sigma(sigmas, schedule_mu(schedule, image_tokens, num_steps))
    return torch.cat([sigmas, sigmas.new_zeros(1)])
