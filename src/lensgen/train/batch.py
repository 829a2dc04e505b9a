"""Training batches: images at their bucket sizes, encoded by the codec into padded token batches.

Each image is encoded at its own size (same sizes together), flattened to tokens and right-padded to
the batch's longest; `token_mask` says which tokens are real so padding never counts in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from lensgen.images import image_to_tensor


@dataclass
class TokenBatch:
    tokens: torch.Tensor  # (B, N, C) clean latent tokens, right-padded
    sizes: list[tuple[int, int]]  # token grid per sample
    token_mask: torch.Tensor | None  # (B, N) True = real; None when nothing is padded
    prompts: list[str]


@torch.no_grad()
def collate(images: list[Image.Image], prompts: list[str], codec) -> TokenBatch:
    """Encode each image at its own size (same sizes together), flatten to tokens, pad to the longest."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault((image.height, image.width), []).append(i)
    token_lists: list[torch.Tensor | None] = [None] * len(images)
    sizes: list[tuple[int, int] | None] = [None] * len(images)
    f = codec.spatial_factor
    for (h, w), idx in by_size.items():
        grid = codec.encode(torch.stack([image_to_tensor(images[i]) for i in idx]))  # (b, C, h/f, w/f)
        for j, i in enumerate(idx):
            token_lists[i] = grid[j].flatten(1).T
            sizes[i] = (h // f, w // f)
    n = max(t.shape[0] for t in token_lists)
    tokens = torch.zeros(len(images), n, token_lists[0].shape[1])
    for i, t in enumerate(token_lists):
        tokens[i, : t.shape[0]] = t
    padded = len({t.shape[0] for t in token_lists}) > 1
    mask = (torch.arange(n)[None] < torch.tensor([t.shape[0] for t in token_lists])[:, None]) if padded else None
    return TokenBatch(tokens=tokens, sizes=sizes, token_mask=mask, prompts=prompts)


__all__ = ["TokenBatch", "collate"]
