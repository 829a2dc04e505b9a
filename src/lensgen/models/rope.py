"""Rotary position embeddings of the Lens MMDiT: three axes (frame, row, column), real arithmetic.

Each head's 64 channels are split (8, 28, 28) across the axes; channel pairs (2i, 2i+1) rotate by
position * theta^(-2i/d_axis). Image rows and columns are centred on zero: for H token rows the
positions run -(H - H//2) .. H//2 - 1 (columns alike), frame 0. Text token k sits at
max(H//2, W//2) + k on all three axes, just past the image. Centred positions are what let the model
generalise to unseen sizes and aspect ratios.

We keep cos/sin tables in real numbers (no complex tensors) so `torch.compile` can fuse the rotation.
"""

from __future__ import annotations

import torch


def axis_frequencies(dim: int, theta: float, device=None) -> torch.Tensor:
    """(dim/2,) angular frequencies theta^(-2i/dim) of one axis."""
    if dim % 2:
        raise ValueError(f"rope axis dims must be even, got {dim}")
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def image_positions(height: int, width: int, device=None) -> torch.Tensor:
    """(H*W, 3) integer positions (frame, row, col) of a token grid, row-major, centred."""
    rows = torch.arange(height, device=device) - (height - height // 2)
    cols = torch.arange(width, device=device) - (width - width // 2)
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    frame = torch.zeros_like(grid_r)
    return torch.stack([frame, grid_r, grid_c], dim=-1).reshape(-1, 3)


def text_positions(height: int, width: int, length: int, device=None) -> torch.Tensor:
    """(S, 3) positions of S text tokens after an H x W image: max(H//2, W//2) + k on every axis."""
    start = max(height // 2, width // 2)
    pos = torch.arange(start, start + length, device=device)
    return pos[:, None].expand(length, 3)


def rope_angles(positions: torch.Tensor, axes_dims: tuple[int, ...], theta: float) -> torch.Tensor:
    """(..., 3) positions -> (..., head_dim/2) rotation angles (float64 for exact tables)."""
    parts = []
    for axis, dim in enumerate(axes_dims):
        freqs = axis_frequencies(dim, theta, device=positions.device)
        parts.append(positions[..., axis, None].to(torch.float64) * freqs)
    return torch.cat(parts, dim=-1)


def joint_rope(
    sizes: list[tuple[int, int]],
    num_image_tokens: int,
    num_text_tokens: int,
    axes_dims: tuple[int, ...],
    theta: float,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, N + S, head_dim/2) for a batch whose sample b has an h_b x w_b token grid.

    Image tokens beyond h_b*w_b (padding up to N) get angle 0; they are masked out of attention.
    """
    angles = torch.zeros(len(sizes), num_image_tokens + num_text_tokens, sum(axes_dims) // 2, dtype=torch.float64,
                         device=device)
    cache: dict[tuple[int, int], torch.Tensor] = {}
    for b, (h, w) in enumerate(sizes):
        if (h, w) not in cache:
            img = rope_angles(image_positions(h, w, device), axes_dims, theta)
            txt = rope_angles(text_positions(h, w, num_text_tokens, device), axes_dims, theta)
            cache[(h, w)] = torch.cat([img, txt], dim=0)
        table = cache[(h, w)]
        angles[b, : h * w] = table[: h * w]
        angles[b, num_image_tokens:] = table[h * w :]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (B, T, heads, head_dim) by angles with cos/sin (B, T, head_dim/2).

    Computed in fp32 and cast back, so bf16 activations keep exact rotations.
    """
    x_pairs = x.float().unflatten(-1, (-1, 2))
    x_even, x_odd = x_pairs[..., 0], x_pairs[..., 1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)
    return out.flatten(-2).type_as(x)
