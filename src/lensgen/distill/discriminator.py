"""The GAN's discriminator: a small head reading the fake-score transformer's image tokens at one block.

As in DMD2, the fake score network already understands noisy images of every level, so the discriminator
is a head on its intermediate features rather than a separate network. `FeatureTap` captures a block's
image-stream output with a forward hook (the model stays a pure module); the head maps each token
through a small MLP and averages over the real (unpadded) tokens, one logit per image.
"""

from __future__ import annotations

import torch
from torch import nn


class DiscriminatorHead(nn.Module):
    def __init__(self, width: int, hidden: int = 256):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, N, W), token_mask (B, N) True = real -> logits (B,)."""
        per_token = self.mlp(self.norm(tokens.float())).squeeze(-1)
        if token_mask is None:
            return per_token.mean(dim=1)
        m = token_mask.to(per_token.dtype)
        return (per_token * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class FeatureTap:
    """Keeps the image-stream output of `model.transformer_blocks[block]` from the last forward pass."""

    def __init__(self, model: nn.Module, block: int = -1):
        blocks = model.transformer_blocks
        if not -len(blocks) <= block < len(blocks):
            raise ValueError(f"loss.disc_block {block} is not a block of a {len(blocks)}-block transformer")
        self.features: torch.Tensor | None = None
        self._handle = blocks[block].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = output[0]

    def take(self) -> torch.Tensor:
        if self.features is None:
            raise RuntimeError("no forward pass since the last take()")
        features, self.features = self.features, None
        return features

    def close(self) -> None:
        self._handle.remove()


__all__ = ["DiscriminatorHead", "FeatureTap"]
