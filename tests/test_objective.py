"""The flow-matching objective on hand-computed cases."""

import math

import pytest
import torch

from lensgen.train.objective import SigmaSampling, masked_mse, noisy_input


def test_noisy_input_and_target_hand_computed():
    x0 = torch.tensor([[[2.0, -1.0]]])
    eps = torch.tensor([[[0.0, 3.0]]])
    x_t, v = noisy_input(x0, eps, torch.tensor([0.25]))
    torch.testing.assert_close(x_t, torch.tensor([[[1.5, 0.0]]]))  # 0.75*x0 + 0.25*eps
    torch.testing.assert_close(v, torch.tensor([[[-2.0, 4.0]]]))  # eps - x0


def test_masked_mse_ignores_padding():
    pred = torch.zeros(2, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]], [[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # real tokens' squared errors: 1, 9, 4, 4, 4 -> mean 22/5
    assert masked_mse(pred, target, mask).item() == pytest.approx(22 / 5)
    assert masked_mse(pred[:, :2], target[:, :2], None).item() == pytest.approx((1 + 9 + 4 + 4) / 4)


def test_sigma_sampling_shift_grows_with_resolution():
    sampler = SigmaSampling()
    gen = torch.Generator().manual_seed(0)
    small = sampler.sample(torch.full((20000,), 64), gen)
    gen = torch.Generator().manual_seed(0)
    large = sampler.sample(torch.full((20000,), 4096), gen)
    assert 0 < small.min() and large.max() < 1
    assert large.mean() > small.mean() + 0.1  # bigger images train more at high noise
    # median of a logit-normal(0, 1) is 0.5; shifted by mu it is e^mu / (e^mu + 1)
    mu = 1.6927e-4 * 4096 + 0.45666666
    assert large.median().item() == pytest.approx(math.exp(mu) / (math.exp(mu) + 1), abs=0.01)
    unshifted = SigmaSampling(shift="none").sample(torch.full((20000,), 4096), torch.Generator().manual_seed(0))
    assert unshifted.median().item() == pytest.approx(0.5, abs=0.01)
