"""The four loss terms of Lens-Turbo's few-step distillation, each on its own, on plain tensors.

Conventions as everywhere in lensgen: x_t = (1 - sigma) x0 + sigma eps, velocity v = eps - x0, and a model's
clean-image estimate x0_hat = x_t - sigma v. The student makes an image x; the terms below say which way x
should move. Models and optimisers stay outside (the trainer calls these with their outputs).

- **DMD2** (Yin et al. 2024, arXiv 2405.14867): re-noise x, ask the real score (the frozen teacher with CFG)
  and the fake score (a copy trained online on the student's images) for their clean estimates; the
  gradient of the reverse KL pushes x by (x0_real - x0_fake), normalised per sample by the mean |x - x0_real|.
- **Decoupled DMD** (arXiv 2511.22677): with CFG the real estimate is x0_cond + (w - 1)(x0_cond - x0_uncond),
  so DMD2's push splits into a distribution-matching part (x0_cond - x0_fake: the regulariser) and a
  CFG-augmentation part ((w - 1)(x0_cond - x0_uncond): the engine of few-step quality), each with its own
  weight and its own noise levels. With equal weights, the same noise and one normaliser they add up to DMD2.
- **SenseFlow** (arXiv 2506.00523): implicit distribution alignment pulls the fake score's weights toward
  the student's after each student step (lambda ~ 0.97); intra-segment guidance regresses the student's jump
  over a segment [sigma_i -> sigma_next] onto the path teacher-to-an-inner-sigma-then-student.
- **GAN with R1**: a non-saturating GAN on a discriminator's logits, with the approximate R1 penalty
  lambda |D(x) - D(x + s eps)|^2 on real images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

NORM_FLOOR = 1e-6  # the DMD normaliser's lower bound (a student image already equal to the real estimate)


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first, kept broadcastable against x."""
    return x.flatten(1).mean(dim=1).reshape(-1, *([1] * (x.dim() - 1)))


def dmd_normaliser(x: torch.Tensor, x0_real: torch.Tensor) -> torch.Tensor:
    """DMD2's per-sample scale: the mean |x - x0_real| (no gradient), so every sample moves by a similar step."""
    return _per_sample_mean((x - x0_real).abs()).detach().clamp_min(NORM_FLOOR)


def cfg_estimate(x0_cond: torch.Tensor, x0_uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """The teacher's guided clean estimate x0_uncond + w (x0_cond - x0_uncond)."""
    return x0_uncond + cfg * (x0_cond - x0_uncond)


def push_loss(x: torch.Tensor, push: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient in x is -push / x.numel(): descending it moves x along `push` (DMD2's form,
    0.5 * mse(x, stop_grad(x + push)))."""
    return 0.5 * F.mse_loss(x.float(), (x + push).detach().float())


def dmd2_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DMD2's distribution-matching loss of the student images x: x0_real is the teacher's guided estimate,
    x0_fake the fake score's, both from the same re-noised x_t. Returns (loss, the normalised push)."""
    push = (x0_real - x0_fake) / dmd_normaliser(x, x0_real)
    return push_loss(x, torch.nan_to_num(push.detach())), push.detach()


def distribution_matching_push(x0_cond: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """Decoupled DMD's regulariser: the unguided real estimate against the fake one."""
    return x0_cond - x0_fake


def cfg_augmentation_push(x0_guided: torch.Tensor, x0_cond: torch.Tensor) -> torch.Tensor:
    """Decoupled DMD's engine: what guidance adds to the teacher's estimate; (w - 1)(x0_cond - x0_uncond) for
    plain CFG (the sampler's norm-rescaled CFG included as it is)."""
    return x0_guided - x0_cond


def decoupled_dmd_loss(x: torch.Tensor, dm_push: torch.Tensor, ca_push: torch.Tensor, dm_norm: torch.Tensor,
                       ca_norm: torch.Tensor, dm_weight: float = 1.0, ca_weight: float = 1.0) -> torch.Tensor:
    """The two decoupled terms, each normalised by its own scale (computed at its own noise level with
    `dmd_normaliser`) and weighted; with equal weights and one shared scale its gradient is DMD2's."""
    loss = x.new_zeros((), dtype=torch.float32)
    if dm_weight:
        loss = loss + dm_weight * push_loss(x, torch.nan_to_num(dm_push / dm_norm))
    if ca_weight:
        loss = loss + ca_weight * push_loss(x, torch.nan_to_num(ca_push / ca_norm))
    return loss


def fake_score_loss(v_fake: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The fake score's own objective: flow matching on the student's (detached) images."""
    return F.mse_loss(v_fake.float(), (eps - x0).detach().float())


@torch.no_grad()
def align_fake_to_student(fake: list[torch.Tensor], student: list[torch.Tensor], lam: float = 0.97) -> None:
    """SenseFlow's implicit distribution alignment: fake <- lam * fake + (1 - lam) * student, in place, so the
    fake score cannot drift far from the distribution the student actually makes."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"the alignment weight must lie in [0, 1], got {lam}")
    for f, s in zip(fake, student, strict=True):
        f.lerp_(s.detach().to(f.dtype), 1.0 - lam)


Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, sigma per sample) -> velocity


def intra_segment_target(x: torch.Tensor, sigma: torch.Tensor, sigma_mid: torch.Tensor, sigma_next: torch.Tensor,
                         teacher: Velocity, student: Velocity) -> torch.Tensor:
    """SenseFlow's intra-segment guidance target for a student jump from sigma to sigma_next: one Euler step
    of the (guided) teacher to sigma_mid inside the segment, then the student's own jump to sigma_next. No
    gradient: it is a regression target."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    with torch.no_grad():
        x_mid = x + (sigma_mid - sigma).reshape(shape) * teacher(x, sigma)
        return x_mid + (sigma_next - sigma_mid).reshape(shape) * student(x_mid, sigma_mid)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float = 1e-3) -> torch.Tensor:
    """mean(sqrt((a - b)^2 + c^2) - c): quadratic near zero, linear far away (robust to a bad target)."""
    return (torch.sqrt((a.float() - b.float()).square() + c * c) - c).mean()


def intra_segment_loss(x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, v_student: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor:
    """The student's direct jump x + (sigma_next - sigma) v against the intra-segment target."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    jump = x + (sigma_next - sigma).reshape(shape) * v_student
    return pseudo_huber(jump, target)


def generator_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: softplus(-D(fake))."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_gan_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(real)) + softplus(D(fake)): the logistic loss of telling them apart."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def approximate_r1(discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, noise_std: float = 0.01,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """|D(x) - D(x + s eps)|^2 on real images: the finite-difference form of R1's gradient penalty, which keeps
    the discriminator smooth around the data without a double backward."""
    eps = torch.randn(real.shape, generator=generator, dtype=real.dtype, device=real.device)
    return (discriminator(real).float() - discriminator(real + noise_std * eps).float()).square().mean()


__all__ = [
    "align_fake_to_student", "approximate_r1", "cfg_augmentation_push", "cfg_estimate", "decoupled_dmd_loss",
    "discriminator_gan_loss", "distribution_matching_push", "dmd2_loss", "dmd_normaliser", "fake_score_loss",
    "generator_gan_loss", "intra_segment_loss", "intra_segment_target", "pseudo_huber", "push_loss",
]
