"""The DiffusionNFT objective: a hand-computed loss, the three identities of r, the advantage mapping, masking,
and the old policy's soft update."""

import math

import pytest
import torch

from lensgen.rl.nft import group_advantages, nft_loss, old_policy_decay, optimality, soft_update


def test_loss_on_a_hand_computed_example():
    # one sample, one token, two channels; beta 0.5, r 0.8, sigma 0.5
    x0 = torch.tensor([[[1.0, -1.0]]])
    x_t = torch.tensor([[[0.5, 0.0]]])
    v = torch.tensor([[[2.0, 0.0]]])
    v_old = torch.tensor([[[1.0, 1.0]]])
    sigma, r, beta = torch.tensor([0.5]), torch.tensor([0.8]), 0.5
    # v+ = 0.5 v_old + 0.5 v = (1.5, 0.5); x0+ = x_t - 0.5 v+ = (-0.25, -0.25); error (-1.25, 0.75)
    # mean sq = (1.5625 + 0.5625) / 2 = 1.0625; weight = mean abs = 1.0 -> 1.0625
    # v- = 1.5 v_old - 0.5 v = (0.5, 1.5); x0- = (0.25, -0.75); error (-0.75, 0.25)
    # mean sq = (0.5625 + 0.0625) / 2 = 0.3125; weight = 0.5 -> 0.625
    # policy = (0.8 * 1.0625 + 0.2 * 0.625) / 0.5 = 1.95; loss = 5 * 1.95 = 9.75
    loss, parts = nft_loss(v, v_old, x_t, x0, sigma, r, beta=beta)
    assert loss.item() == pytest.approx(9.75)
    assert parts["old_deviation"].item() == pytest.approx((1 + 1) / 2)
    # the KL pull adds kl_weight * mean |v - v_ref|^2
    loss_kl, parts = nft_loss(v, v_old, x_t, x0, sigma, r, beta=beta, v_ref=torch.zeros_like(v), kl_weight=0.1)
    assert parts["kl"].item() == pytest.approx(2.0) and loss_kl.item() == pytest.approx(9.75 + 0.2)


def descend(r: float, steps: int = 1500, beta: float = 1.0, start_offset: float = 0.3, adaptive: bool = True):
    """Gradient descent on v alone under the NFT loss, from near v_old: where does r send it?"""
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 6, 3), torch.randn(4, 6, 3)
    sigma = torch.tensor([0.2, 0.4, 0.6, 0.8])
    x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * eps
    target = eps - x0  # the flow-matching velocity of these samples
    v_old = target + 0.5 * torch.randn_like(target)
    v = (v_old + start_offset * torch.randn_like(v_old)).requires_grad_(True)
    start = v.detach().clone()
    opt = torch.optim.Adam([v], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nft_loss(v, v_old, x_t, x0, sigma, torch.full((4,), r), beta=beta, adaptive=adaptive)[0].backward()
        opt.step()
    return v.detach(), start, v_old, target


def test_r_one_pulls_v_onto_the_flow_matching_target():
    v, _, _, target = descend(1.0)
    torch.testing.assert_close(v, target, atol=5e-3, rtol=0)  # Adam's step size is the floor


def test_r_zero_pushes_v_away_from_the_target():
    v, start, _, target = descend(0.0, steps=30)
    assert (v - target).norm() > (start - target).norm() * 1.2


def test_r_half_is_a_pure_proximal_pull_to_the_old_policy():
    """The two branches balance to s^2 beta^2 |v - v_old|^2 (plus a constant): v goes back to v_old."""
    v, start, v_old, target = descend(0.5, adaptive=False)
    torch.testing.assert_close(v, v_old, atol=5e-3, rtol=0)
    assert (start - v_old).abs().max() > 0.5
    # at v = v_old the gradient vanishes, whatever the target
    x0, x_t = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    v_at_old = v_old[:2, :5].clone().requires_grad_(True)
    nft_loss(v_at_old, v_old[:2, :5], x_t, x0, torch.tensor([0.3, 0.7]), torch.full((2,), 0.5))[0].backward()
    assert v_at_old.grad.abs().max() < 1e-6


def test_advantages_are_group_centred_over_the_global_std_and_skip_invalid_samples():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 9.0])
    groups = torch.tensor([0, 0, 1, 1, 1])
    valid = torch.tensor([True, True, True, True, False])
    adv = group_advantages(rewards, groups, valid)
    std = torch.tensor([1.0, 0.0, 0.5, 0.5]).std(unbiased=False).item()  # over valid rewards only
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0, 0.0, 0.0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)
    assert group_advantages(rewards, groups, torch.zeros(5, dtype=torch.bool)).abs().sum() == 0


def test_group_scale_divides_each_group_by_its_own_spread():
    # an easy prompt (rewards 0.9, 0.1) and a hard one (0.02, 0.00): with the global std the hard prompt's
    # advantages are ~0.05 (r ~ 0.505, no signal); with its own std they are +-1, as large as the easy one's
    rewards, groups = torch.tensor([0.9, 0.1, 0.02, 0.0]), torch.tensor([0, 0, 1, 1])
    glob = group_advantages(rewards, groups)
    std = rewards.std(unbiased=False).item()
    assert glob.tolist() == pytest.approx([0.4 / (std + 1e-4), -0.4 / (std + 1e-4),
                                           0.01 / (std + 1e-4), -0.01 / (std + 1e-4)], rel=1e-6)
    own = group_advantages(rewards, groups, scale="group")
    assert own.tolist() == pytest.approx([0.4 / 0.4001, -0.4 / 0.4001, 0.01 / 0.0101, -0.01 / 0.0101], rel=1e-6)
    # a group whose rewards are all equal stays at 0 (no division blow-up); invalid samples too
    flat = group_advantages(torch.tensor([0.3, 0.3, 1.0, 0.0]), groups, torch.tensor([1, 1, 1, 0]), scale="group")
    assert flat.tolist() == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="group"):
        group_advantages(rewards, groups, scale="prompt")


def test_optimality_maps_clipped_advantages_to_probabilities():
    r = optimality(torch.tensor([-10.0, -5.0, -2.5, 0.0, 2.5, 5.0, 10.0]))
    assert r.tolist() == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_old_policy_decay_and_soft_update():
    assert old_policy_decay(1) == pytest.approx(0.001) and old_policy_decay(250) == pytest.approx(0.25)
    assert old_policy_decay(10_000) == 0.5 and old_policy_decay(0) == 0.0
    old, new = [torch.tensor([1.0, 3.0])], [torch.tensor([5.0, -1.0])]
    soft_update(old, new, 0.25)  # 0.25 * old + 0.75 * new
    assert old[0].tolist() == pytest.approx([4.0, 0.0])
    assert not math.isnan(old[0].sum().item())
