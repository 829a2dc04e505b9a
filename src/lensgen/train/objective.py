"""The rectified-flow training objective, on one screen.

    x_t = (1 - sigma) x0 + sigma eps,     target v = eps - x0,     loss = MSE over real tokens.

sigma is drawn logit-normal (sigmoid of a Gaussian: most samples at mid noise, where learning is
hardest) and then shifted towards noise by a resolution-dependent mu, the same exponential shift the
sampler applies (`flow.schedule.shift_sigma`). By default mu = FLUX.2's fitted mu for many steps,
1.6927e-4 * L + 0.45667 for L image tokens: the value the sampler's schedule tends to as the step
count grows, so what the model trains on and what it is asked at sampling time agree; larger images
get more high-noise training, as they need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lensgen.flow.schedule import shift_sigma, train_mu


@dataclass
class SigmaSampling:
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: str | float = "flux2"  # "flux2": mu from the token count; a number: that fixed mu; "none": no shift

    def mu(self, image_tokens: torch.Tensor) -> torch.Tensor:
        if self.shift == "flux2":
            return train_mu(image_tokens.double())
        if self.shift == "none":
            return torch.zeros_like(image_tokens, dtype=torch.float64)
        return torch.full_like(image_tokens, float(self.shift), dtype=torch.float64)

    def sample(self, image_tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) sigmas for samples with the given (B,) image-token counts."""
        normal = torch.randn(image_tokens.shape, generator=generator, dtype=torch.float64)
        sigma = torch.sigmoid(self.logit_mean + self.logit_std * normal)
        return shift_sigma_per_sample(sigma, self.mu(image_tokens)).float()


def shift_sigma_per_sample(sigma: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """`shift_sigma` with one mu per sample."""
    return 1.0 / (1.0 + torch.exp(-mu) * (1.0 / sigma - 1.0))


def noisy_input(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and the velocity target for tokens (B, N, C), or any (B, ...) tensor, and sigma (B,)."""
    s = sigma.to(x0.dtype).reshape(-1, *[1] * (x0.ndim - 1))
    return (1 - s) * x0 + s * noise, noise - x0


def masked_mse(pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over real tokens only (token_mask (B, N) True = real); padding never counts."""
    err = (pred.float() - target.float()).square().mean(dim=-1)
    if token_mask is None:
        return err.mean()
    mask = token_mask.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1)


__all__ = ["SigmaSampling", "noisy_input", "masked_mse", "shift_sigma", "shift_sigma_per_sample"]
