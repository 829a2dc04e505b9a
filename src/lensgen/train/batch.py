"""Training batches: images at their bucket sizes, encoded by the codec into padded token batches.

Each image is encoded at its own size (same sizes together), flattened to tokens and right-padded to
the batch's longest; `token_mask` says which tokens are real so padding never counts in the loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from PIL import Image

from lensgen.data.sources import BatchSource, pick_caption
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


def load_batch(source: BatchSource, keys: list, codec, rng: random.Random, *, caption: str = "mixed",
               dense_prob: float = 0.1, caption_mix: str = "batch", dropout: float = 0.0) -> TokenBatch:
    """Load a batch's items, pick each one's caption (`caption`: dense, short or mixed; the empty prompt with
    probability `dropout`), encode the images. With `caption_mix` "batch" a mixed batch draws its mode once:
    the text stream is padded to the batch's longest caption, so a short batch costs a fraction of a dense
    one, and in expectation the mix is the same."""
    mode = caption
    if mode == "mixed" and caption_mix == "batch":
        mode = "dense" if rng.random() < dense_prob else "short"
    images, prompts = [], []
    for key in keys:
        image, captions = source.load(key)
        prompt = pick_caption(captions, mode, dense_prob, rng)
        if rng.random() < dropout:
            prompt = ""  # the empty prompt: zero features, all-false mask
        images.append(image)
        prompts.append(prompt)
    return collate(images, prompts, codec)


__all__ = ["TokenBatch", "collate", "load_batch"]
