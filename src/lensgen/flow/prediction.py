"""What the network's output means, and how it becomes the velocity the loss and the sampler use.

    "v"  the output is the velocity v = eps - x0 itself (Lens, FLUX: right for a 128-channel VAE latent).
    "x"  the output is the clean image x0; v = (x_t - x0_hat) / sigma, since x_t = x0 + sigma * v.

x-prediction is for pixel-space models whose tokens are wide patches (the Shapes codec: 8x8x3 = 192
values per token against a 256-wide transformer). Predicting v there means reproducing the
high-dimensional noise through the network, and the samples keep speckle the model could not
predict; the clean image lies on a low-dimensional manifold the network can reach (Li & He 2025,
"Back to Basics: Let Denoising Generative Models Denoise", JiT). The loss stays on v, as JiT found
best, so it weighs x0 errors by 1/sigma^2; sigma is clamped at `MIN_SIGMA` in the division so the
weight stays finite near clean data. Guidance combines velocities either way: u + g (c - u) on v
equals the same mix of x0 predictions, because v is affine in x0_hat for a fixed x_t.
The shipped Shapes model predicts v: switching a v-trained one to x lost ground (its model card).
"""

from __future__ import annotations

import torch

PREDICTIONS = ("v", "x")
MIN_SIGMA = 0.05  # JiT's clamp on the 1/sigma of the x -> v conversion


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be 'v' (velocity) or 'x' (clean image), got {prediction!r}")
    return prediction


def velocity(output: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, prediction: str) -> torch.Tensor:
    """The velocity for network `output` at tokens x_t (B, N, C) and noise levels sigma (B,)."""
    if check_prediction(prediction) == "v":
        return output
    s = sigma.to(output.dtype).clamp_min(MIN_SIGMA)[:, None, None]
    return (x_t.to(output.dtype) - output) / s


__all__ = ["MIN_SIGMA", "PREDICTIONS", "check_prediction", "velocity"]
