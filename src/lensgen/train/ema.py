"""Exponential moving average of the weights: the exported model is the EMA, which samples better than
the last raw step. Kept in fp32 beside the (possibly sharded) model; with FSDP2 each rank holds the
EMA of its own shards, so EMA memory scales down with the world size too."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, trainable_only: bool = False):
        """trainable_only: average only the parameters that train (LoRA adapters, not the frozen base)."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().clone().float() for name, p in model.named_parameters()
                       if p.requires_grad or not trainable_only}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        # warm-up: early on the average forgets its random init faster (min(decay, (1+t)/(10+t)))
        decay = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)
