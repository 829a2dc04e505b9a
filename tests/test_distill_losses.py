"""Each distillation term on a case whose answer is known."""

import pytest
import torch

from lensgen.distill import losses as L


def _images(seed: int, shape=(3, 4, 5, 5)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _grad(loss_fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    loss_fn(x).backward()
    return x.grad


def test_dmd_gradient_vanishes_when_fake_and_real_scores_agree():
    x, cond, uncond = _images(0), _images(1), _images(2)
    real = L.cfg_estimate(cond, uncond, 4.0)
    grad = _grad(lambda x: L.dmd2_loss(x, real, real.clone())[0], x)
    assert grad.abs().max() == 0.0


def test_dmd_gradient_moves_the_image_toward_the_real_estimate_with_per_sample_normalisation():
    x, cond, uncond, fake = _images(0), _images(1), _images(2), _images(3)
    real = L.cfg_estimate(cond, uncond, 3.0)
    grad = _grad(lambda x: L.dmd2_loss(x, real, fake)[0], x)
    norm = (x - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = -(real - fake) / norm / x.numel()  # descending the loss moves x by +(real - fake) / norm
    torch.testing.assert_close(grad, expected)
    # a sample twice as far from the real estimate gets half the push per unit of disagreement
    assert torch.allclose(L.dmd_normaliser(2 * (x - real) + real, real), 2 * norm)


def test_decoupled_terms_add_up_to_dmd2_with_equal_weights_and_a_shared_scale():
    x, cond, uncond, fake = _images(0), _images(1), _images(2), _images(3)
    cfg = 4.5
    guided = L.cfg_estimate(cond, uncond, cfg)
    norm = L.dmd_normaliser(x, guided)
    dm, ca = L.distribution_matching_push(cond, fake), L.cfg_augmentation_push(guided, cond)
    torch.testing.assert_close(ca, (cfg - 1) * (cond - uncond))  # plain CFG: (w - 1)(cond - uncond)
    decoupled = _grad(lambda x: L.decoupled_dmd_loss(x, dm, ca, norm, norm), x)
    dmd2 = _grad(lambda x: L.dmd2_loss(x, guided, fake)[0], x)
    torch.testing.assert_close(decoupled, dmd2)
    # each weight scales its own term only; at CFG 1 the augmentation term is gone
    only_ca = _grad(lambda x: L.decoupled_dmd_loss(x, dm, ca, norm, norm, dm_weight=0.0, ca_weight=2.0), x)
    torch.testing.assert_close(only_ca, -2.0 * ca / norm / x.numel())
    torch.testing.assert_close(L.cfg_augmentation_push(L.cfg_estimate(cond, uncond, 1.0), cond), torch.zeros_like(x))


def test_fake_score_loss_is_zero_on_the_flow_matching_target():
    x0, eps = _images(0), _images(1)
    assert L.fake_score_loss(eps - x0, x0, eps) == 0.0
    assert float(L.fake_score_loss(eps - x0 + 0.5, x0, eps)) == pytest.approx(0.25)


def test_implicit_alignment_pulls_the_fake_weights_toward_the_student():
    fake, student = [torch.zeros(3), torch.ones(2)], [torch.ones(3), torch.full((2,), 3.0)]
    L.align_fake_to_student(fake, student, lam=0.97)
    torch.testing.assert_close(fake[0], torch.full((3,), 0.03))
    torch.testing.assert_close(fake[1], torch.full((2,), 0.97 + 0.03 * 3.0))
    L.align_fake_to_student(fake, student, lam=1.0)  # lambda 1: the fake score is left alone
    torch.testing.assert_close(fake[0], torch.full((3,), 0.03))
    with pytest.raises(ValueError, match="alignment weight"):
        L.align_fake_to_student(fake, student, lam=1.5)


def test_intra_segment_target_is_the_students_own_jump_on_a_straight_flow():
    """On a straight flow (constant velocity) teacher-then-student lands where the student's one jump lands:
    the loss is zero; a teacher that disagrees inside the segment moves the target by its own Euler step."""
    x = _images(0)
    v = _images(1)
    sigma, mid, nxt = torch.full((3,), 0.75), torch.full((3,), 0.6), torch.full((3,), 0.5)
    straight = lambda xt, s: v  # noqa: E731
    target = L.intra_segment_target(x, sigma, mid, nxt, teacher=straight, student=straight)
    assert float(L.intra_segment_loss(x, sigma, nxt, v, target)) == pytest.approx(0.0, abs=1e-6)
    other = _images(2)
    target = L.intra_segment_target(x, sigma, mid, nxt, teacher=lambda xt, s: other, student=straight)
    torch.testing.assert_close(target, x - 0.15 * other - 0.1 * v)
    assert L.intra_segment_loss(x, sigma, nxt, v, target) > 0.01


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_away():
    a = torch.zeros(4)
    assert L.pseudo_huber(a, a) == 0.0
    assert float(L.pseudo_huber(a + 1e-5, a)) == pytest.approx(0.5 * 1e-10 / 1e-3, rel=1e-2)  # fp32 cancellation
    assert float(L.pseudo_huber(a + 10.0, a)) == pytest.approx(10.0 - 1e-3, rel=1e-6)


def test_gan_losses_are_the_non_saturating_logistic_pair():
    logits = torch.tensor([0.0, 2.0, -1.0])
    assert float(L.generator_gan_loss(torch.zeros(3))) == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert float(L.generator_gan_loss(logits)) == pytest.approx(torch.nn.functional.softplus(-logits).mean().item())
    # a discriminator sure of both (real +20, fake -20) has almost no loss; one that swaps them, a large one
    assert L.discriminator_gan_loss(torch.full((2,), 20.0), torch.full((2,), -20.0)) < 1e-8
    assert L.discriminator_gan_loss(torch.full((2,), -20.0), torch.full((2,), 20.0)) > 39.0


def test_r1_is_zero_for_a_constant_discriminator_and_grows_with_its_slope():
    real = _images(0)
    constant = lambda x: torch.full((x.shape[0],), 0.7)  # noqa: E731
    assert L.approximate_r1(constant, real) == 0.0
    gen = torch.Generator().manual_seed(0)
    gentle = L.approximate_r1(lambda x: x.flatten(1).sum(1), real, noise_std=0.01, generator=gen)
    gen = torch.Generator().manual_seed(0)
    steep = L.approximate_r1(lambda x: 10 * x.flatten(1).sum(1), real, noise_std=0.01, generator=gen)
    assert gentle > 0 and float(steep) == pytest.approx(100 * float(gentle), rel=1e-4)
