"""The DiffusionNFT objective (Zheng et al. 2025, arXiv 2509.16117), on one screen.

Data come from the old policy v_old sampling without CFG; each image gets a reward R. Within a prompt's
group of images the advantage is A = (R - group mean) / (std over all rewards + 1e-4), mapped to an
optimality probability r = clip(0.5 + 0.5 * clip(A, -c, c) / c, 0, 1) (c = 5). On the forward process
x_t = (1 - sigma) x0 + sigma eps of a collected image x0, two implicit policies are built from the
trained velocity v and the old one:

    v+ = (1 - beta) v_old + beta v          (positive: where good samples pull)
    v- = (1 + beta) v_old - beta v          (negative: its mirror image around v_old)

and each is regressed onto x0 in data space, x0_hat = x_t - sigma * v, with an adaptive per-sample
weight (the mean absolute x0 error, not back-propagated):

    loss = c * mean_i [ r_i * |x0+ - x0|^2 / w+ + (1 - r_i) * |x0- - x0|^2 / w- ] / beta  + k * |v - v_ref|^2

r = 1 pulls v+ (so v) onto the sample's flow-matching target; r = 0 pulls v- there, which pushes v the
other way; r = 1/2 balances the two: |x0+ - x0|^2 + |x0- - x0|^2 = 2 |x_t - s v_old - x0|^2 + 2 s^2 beta^2
|v - v_old|^2, a pure proximal pull of v toward v_old. (With the adaptive weights v = v_old is still where
its gradient vanishes, but the weights, free of gradient, make every v - v_old along the target's
direction stationary too.) After each RL step
the old policy follows the trained one softly: theta_old <- eta theta_old + (1 - eta) theta with
eta = min(0.001 * step, 0.5), so early on sampling follows training closely, later it lags for stability.
"""

from __future__ import annotations

import torch

ADV_CLIP = 5.0  # c: advantages are clipped to [-c, c] before the mapping to r
WEIGHT_FLOOR = 1e-5  # the adaptive weight's lower bound
ADVANTAGE_SCALES = ("global", "group")  # what the centred rewards are divided by


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor | None = None,
                     eps: float = 1e-4, scale: str = "global") -> torch.Tensor:
    """(R - mean of the prompt's group) / (std + eps); invalid samples are left out of both statistics and
    get advantage 0. rewards, groups (int ids), valid: (N,).

    scale "global" divides by the std of all rewards (as published); "group" by the group's own std, as
    GRPO does: then a prompt that every image nearly fails still gets full-scale advantages from its small
    differences, where the global std (inflated by easy prompts) shrinks them toward r = 1/2."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()
    rewards = rewards.double()
    adv = torch.zeros_like(rewards)
    if not valid.any():
        return adv.float()
    std = rewards[valid].std(unbiased=False)
    for g in torch.unique(groups[valid]):
        members = valid & (groups == g)
        centred = rewards[members] - rewards[members].mean()
        adv[members] = centred / ((centred.square().mean().sqrt() if scale == "group" else std) + eps)
    return adv.float()


def optimality(advantages: torch.Tensor, clip: float = ADV_CLIP) -> torch.Tensor:
    """r = clip(0.5 + 0.5 * clip(A, -c, c) / c, 0, 1): 1 best, 0 worst, 1/2 average."""
    return (0.5 + 0.5 * advantages.clamp(-clip, clip) / clip).clamp(0.0, 1.0)


def _weighted_x0_error(x0_hat: torch.Tensor, x0: torch.Tensor, token_mask: torch.Tensor | None,
                       adaptive: bool = True) -> torch.Tensor:
    """Per sample: mean squared x0 error over real tokens, divided (when adaptive) by its mean absolute
    error, which carries no gradient."""
    if token_mask is None:
        token_mask = torch.ones(x0.shape[:2], dtype=torch.bool, device=x0.device)
    m = token_mask[..., None].to(x0.dtype)
    count = m.sum(dim=(1, 2)) * x0.shape[-1]
    diff = x0_hat - x0
    error = (diff.square() * m).sum(dim=(1, 2)) / count
    if not adaptive:
        return error
    with torch.no_grad():
        weight = ((diff.abs().double() * m).sum(dim=(1, 2)) / count).clamp_min(WEIGHT_FLOOR).to(diff.dtype)
    return error / weight


def nft_loss(v: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
             r: torch.Tensor, beta: float = 1.0, v_ref: torch.Tensor | None = None, kl_weight: float = 0.0,
             token_mask: torch.Tensor | None = None, adv_clip: float = ADV_CLIP,
             adaptive: bool = True) -> tuple[torch.Tensor, dict]:
    """The NFT loss of a micro-batch, averaged over its samples, and its parts (detached, for logging).

    v, v_old, v_ref, x_t, x0: (B, N, C) tokens; sigma, r: (B,); token_mask (B, N), True = real token;
    adaptive: the per-sample adaptive weighting (as published; False is the plain x0 regression)."""
    v_old = v_old.detach()
    s = sigma.to(v.dtype)[:, None, None]
    v_pos = beta * v + (1 - beta) * v_old
    v_neg = (1 + beta) * v_old - beta * v
    positive = _weighted_x0_error(x_t - s * v_pos, x0, token_mask, adaptive)
    negative = _weighted_x0_error(x_t - s * v_neg, x0, token_mask, adaptive)
    policy = (r * positive + (1 - r) * negative) / beta
    loss = adv_clip * policy.mean()
    parts = {"policy_loss": loss.detach(), "old_deviation": (v.detach() - v_old).square().mean()}
    if v_ref is not None:
        kl = (v - v_ref.detach()).square().mean(dim=(1, 2)).mean()
        parts["kl"] = kl.detach()
        if kl_weight:
            loss = loss + kl_weight * kl
    return loss, parts


def old_policy_decay(step: int, rate: float = 0.001, cap: float = 0.5) -> float:
    """eta for theta_old <- eta theta_old + (1 - eta) theta after optimiser step `step` (1-based counts)."""
    return min(rate * step, cap)


@torch.no_grad()
def soft_update(old: list[torch.Tensor], new: list[torch.Tensor], eta: float) -> None:
    """old <- eta * old + (1 - eta) * new, in place (sharded tensors update their own shards)."""
    for o, n in zip(old, new, strict=True):
        o.lerp_(n.detach().to(o.dtype), 1.0 - eta)


__all__ = ["ADV_CLIP", "group_advantages", "nft_loss", "old_policy_decay", "optimality", "soft_update"]
