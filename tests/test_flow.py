"""Sampling schedule (FLUX.2 empirical mu) and the Euler / CFG sampler."""

import math

import pytest
import torch

from lensgen.flow.sampler import cfg_velocity_fn, euler_sample, guided_velocity
from lensgen.flow.schedule import empirical_mu, sampling_sigmas, schedule_mu, shift_sigma, train_mu


def test_empirical_mu_hand_computed():
    # L = 4096 (1024 px), N = 20: m10 = 0.35791 + 1.89833, m200 = 0.69333 + 0.45667
    m10 = 8.73809524e-5 * 4096 + 1.89833333
    m200 = 1.6927e-4 * 4096 + 0.45666666
    expected = m10 + (m200 - m10) * (20 - 10) / 190
    assert empirical_mu(4096, 20) == pytest.approx(expected, rel=1e-12)
    assert empirical_mu(4096, 10) == pytest.approx(m10)
    assert empirical_mu(4096, 200) == pytest.approx(m200)
    assert empirical_mu(5000, 20) == pytest.approx(1.6927e-4 * 5000 + 0.45666666)  # L > 4300: m200


def test_sigmas_shifted_and_terminated():
    sig = sampling_sigmas(20, 4096)
    assert sig.shape == (21,) and sig[0] == 1.0 and sig[-1] == 0.0
    assert torch.all(sig[1:] < sig[:-1])
    mu = empirical_mu(4096, 20)
    raw = 1 - 1 / 20  # second entry of linspace(1, 1/N, N)
    assert sig[1].item() == pytest.approx(math.exp(mu) / (math.exp(mu) + (1 / raw - 1)))
    unshifted = sampling_sigmas(4, 64, shift=False)
    assert unshifted.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert shift_sigma(torch.tensor(0.5), 0.0).item() == pytest.approx(0.5)


def test_named_schedules():
    assert schedule_mu("empirical", 64, 20) == empirical_mu(64, 20)
    assert schedule_mu("train", 64, 20) == schedule_mu("train", 64, 50) == pytest.approx(1.6927e-4 * 64 + 0.45666666)
    assert schedule_mu(0.7, 64, 20) == 0.7
    fixed = sampling_sigmas(4, 64, schedule=0.0)
    assert fixed.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    # at 64 tokens FLUX.2's 20-step fit shifts far harder towards noise than training did
    assert sampling_sigmas(20, 64)[-2] > sampling_sigmas(20, 64, schedule="train")[-2]
    assert train_mu(4096) == pytest.approx(empirical_mu(4096, 200))
    with pytest.raises(ValueError, match="schedule"):
        sampling_sigmas(4, 64, schedule="fast")


def test_guided_velocity_rescales_each_token_to_cond_norm():
    cond, uncond = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    out = guided_velocity(cond, uncond, 5.0)
    raw = uncond + 5.0 * (cond - uncond)
    torch.testing.assert_close(out.norm(dim=-1), cond.norm(dim=-1))
    cos = torch.nn.functional.cosine_similarity(out, raw, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    torch.testing.assert_close(guided_velocity(cond, uncond, 1.0), cond)


def test_cfg_runs_one_doubled_batch():
    calls = []

    def model(x, sigma):
        calls.append(x.shape[0])
        return torch.cat([torch.ones_like(x[:1]).expand(x.shape[0] // 2, -1, -1),
                          torch.zeros_like(x[: x.shape[0] // 2])])

    fn = cfg_velocity_fn(model, 3.0)
    v = fn(torch.randn(2, 3, 4), torch.rand(2))
    assert calls == [4]
    torch.testing.assert_close(v, torch.ones(2, 3, 4))


def test_euler_integrates_straight_flow_exactly():
    # For x_t = (1 - s) x0 + s eps the true velocity is eps - x0; Euler on straight paths is exact.
    x0, eps = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    sigmas = sampling_sigmas(7, 16)

    def true_velocity(x, sigma):
        return eps - x0

    out = euler_sample(true_velocity, eps.clone(), sigmas)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def gaussian_flow(mu: float, s: float):
    """The exact velocity field for data N(mu, s^2) and the exact ODE endpoint of a noise value z."""

    def velocity(x, sigma):
        a = 1 - sigma[:, None, None].double()
        sg = sigma[:, None, None].double()
        var = a * a * s * s + sg * sg
        x0_mean = mu + a * s * s / var * (x.double() - a * mu)
        return ((x.double() - x0_mean) / sg).float()

    return velocity, (lambda z: mu + s * z)


def test_dpm_solver_2m_is_second_order_where_euler_is_first():
    """On the exact field of Gaussian data, from noise to sigma 0.2: halving the step halves Euler's error
    and quarters DPM-Solver++(2M)'s; both land on clean data exactly when that data is one point."""
    from lensgen.flow.sampler import sample

    mu, s = 2.0, 0.3
    velocity, _ = gaussian_flow(mu, s)
    z = torch.randn(64, 4, 1, generator=torch.Generator().manual_seed(0))
    truth = 0.8 * mu + z * math.sqrt((0.8 * s) ** 2 + 0.2**2)  # the exact flow at sigma 0.2

    def error(solver, steps):
        grid = torch.linspace(1.0, 0.2, steps + 1, dtype=torch.float64)
        return (sample(velocity, z.clone(), grid, solver=solver) - truth).abs().max().item()

    euler, dpm = [error("euler", n) for n in (8, 16, 32)], [error("dpm2", n) for n in (8, 16, 32)]
    assert all(1.8 < a / b < 2.2 for a, b in zip(euler, euler[1:]))  # first order
    assert all(a / b > 3.5 for a, b in zip(dpm, dpm[1:]))  # second order
    assert dpm[0] < euler[0] / 3
    point = torch.full((1, 3, 2), 0.7)  # data that is one point: v = (x - x0) / sigma
    for solver in ("euler", "dpm2"):
        out = sample(lambda x, sg: (x - point) / sg[:, None, None], torch.randn(1, 3, 2), sampling_sigmas(5, 4),
                     solver=solver)
        torch.testing.assert_close(out, point)
    with pytest.raises(ValueError, match="solver"):
        sample(velocity, z, sampling_sigmas(2, 64), solver="heun")


@pytest.mark.parametrize("solver", ["euler", "dpm2"])
def test_integrate_is_sample_with_its_gradient_through_every_step(solver):
    """Reward backpropagation differentiates the sampler: `integrate` gives `sample`'s result and the exact
    derivative (against central differences) of it with respect to what the velocity depends on."""
    from lensgen.flow.sampler import integrate, sample

    noise = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = sampling_sigmas(6, 4)
    target = torch.linspace(-1, 1, 3, dtype=torch.float64)

    def run(scale, fn):
        return fn(lambda x, sg: scale * (x - target) / sg[:, None, None].to(x.dtype), noise, sigmas, solver=solver)

    scale = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        out = run(scale, integrate)
    plain = run(scale, sample)
    assert not plain.requires_grad and torch.equal(out.detach(), plain)
    (grad,) = torch.autograd.grad(out.square().sum(), scale)
    eps = 1e-6
    numeric = (run(scale.detach() + eps, sample).square().sum() - run(scale.detach() - eps, sample).square().sum()) / (2 * eps)
    assert float(grad) == pytest.approx(float(numeric), rel=1e-5)
