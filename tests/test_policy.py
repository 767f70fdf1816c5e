from __future__ import annotations

import math
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import Normal as TorchNormal
from torch.distributions import kl_divergence

from maml_rl.policy import (
    Categorical,
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    Normal,
    action_noise,
    build_policy,
    forward,
    kl,
    log_prob,
    parameters_of,
    sample,
)


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_normal(shape: tuple[int, ...], seed: int) -> Normal:
    g = gen(seed)
    return Normal(torch.randn(shape, generator=g), 0.3 * torch.randn(shape, generator=g))


def test_gaussian_log_prob_matches_closed_form() -> None:
    dist = random_normal((5, 3), 0)
    actions = torch.randn(5, 3, generator=gen(1))
    expected = TorchNormal(dist.mean, dist.log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(log_prob(dist, actions), expected, rtol=1e-12, atol=1e-12)
    # hand-worked: standard normal at 0 in one dimension is -½ log 2π
    single = Normal(torch.zeros(1, 1), torch.zeros(1, 1))
    assert log_prob(single, torch.zeros(1, 1)).item() == pytest.approx(-0.5 * math.log(2 * math.pi))


def test_categorical_log_prob_and_kl() -> None:
    logits_p = torch.randn(6, 4, generator=gen(2))
    logits_q = torch.randn(6, 4, generator=gen(3))
    actions = torch.tensor([0, 1, 2, 3, 1, 0])
    p, q = Categorical(logits_p), Categorical(logits_q)
    expected = TorchCategorical(logits=logits_p).log_prob(actions)
    torch.testing.assert_close(log_prob(p, actions), expected)
    expected_kl = kl_divergence(
        TorchCategorical(logits=logits_p), TorchCategorical(logits=logits_q)
    )
    torch.testing.assert_close(kl(p, q), expected_kl)


def test_gaussian_kl_matches_closed_form() -> None:
    p, q = random_normal((7, 2), 4), random_normal((7, 2), 5)
    expected = kl_divergence(
        TorchNormal(p.mean, p.log_std.exp()), TorchNormal(q.mean, q.log_std.exp())
    ).sum(-1)
    torch.testing.assert_close(kl(p, q), expected, rtol=1e-12, atol=1e-12)
    # hand-worked: unit variances, means 0 and 1 -> ½
    p1 = Normal(torch.zeros(1, 1), torch.zeros(1, 1))
    q1 = Normal(torch.ones(1, 1), torch.zeros(1, 1))
    assert kl(p1, q1).item() == pytest.approx(0.5)


def test_kl_of_identical_policies_is_zero_with_zero_gradient() -> None:
    policy = GaussianMLPPolicy(3, 2, (8,), generator=gen(0))
    theta = {k: v.requires_grad_(True) for k, v in parameters_of(policy).items()}
    obs = torch.randn(10, 3, generator=gen(1))
    old = forward(policy, {k: v.detach() for k, v in theta.items()}, obs)
    value = kl(old, forward(policy, theta, obs)).mean()
    grads = torch.autograd.grad(value, list(theta.values()))
    assert value.item() == pytest.approx(0.0, abs=1e-15)
    assert all(torch.count_nonzero(g.abs() > 1e-12) == 0 for g in grads)


def test_initialisation_xavier_zero_bias_and_log_std() -> None:
    policy = GaussianMLPPolicy(4, 2, (16, 16), init_std=0.5, generator=gen(0))
    assert torch.allclose(policy.log_std, torch.full((2,), math.log(0.5)))
    for layer in policy.mean:
        if isinstance(layer, torch.nn.Linear):
            assert torch.count_nonzero(layer.bias) == 0
            bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
            assert layer.weight.abs().max() <= bound
            assert layer.weight.abs().max() > 0.5 * bound
    same = GaussianMLPPolicy(4, 2, (16, 16), init_std=0.5, generator=gen(0))
    other = GaussianMLPPolicy(4, 2, (16, 16), init_std=0.5, generator=gen(1))
    first = "mean.0.weight"
    assert torch.equal(policy.get_parameter(first), same.get_parameter(first))
    assert not torch.equal(policy.get_parameter(first), other.get_parameter(first))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "elu"])
def test_functional_forward_matches_module(nonlinearity: str) -> None:
    policy = GaussianMLPPolicy(3, 2, (8, 8), nonlinearity, generator=gen(0))
    obs = torch.randn(5, 3, generator=gen(1))
    dist = forward(policy, parameters_of(policy), obs)
    assert isinstance(dist, Normal)
    direct = policy(obs)
    torch.testing.assert_close(dist.mean, direct.mean)
    torch.testing.assert_close(dist.log_std, direct.log_std)
    assert isinstance(
        policy.mean[1],
        {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "elu": torch.nn.ELU}[nonlinearity],
    )


def test_per_task_forward_uses_each_tasks_parameters() -> None:
    policy = GaussianMLPPolicy(3, 2, (8,), generator=gen(0))
    thetas = [parameters_of(GaussianMLPPolicy(3, 2, (8,), generator=gen(s))) for s in range(4)]
    stacked = {k: torch.stack([t[k] for t in thetas]) for k in thetas[0]}
    obs = torch.randn(4, 5, 3, generator=gen(9))
    dist = forward(policy, stacked, obs, per_task=True)
    assert isinstance(dist, Normal)
    for n, theta in enumerate(thetas):
        single = forward(policy, theta, obs[n])
        assert isinstance(single, Normal)
        torch.testing.assert_close(dist.mean[n], single.mean)


@pytest.mark.parametrize("discrete", [False, True])
def test_batched_per_task_forward_equals_vmap_with_gradients(discrete: bool) -> None:
    """The batched-product path of forward(per_task=True) against vmap(functional_call), the
    generic path, on obs [N, T, K, D]: values and gradients w.r.t. the stacked params."""
    from torch.func import functional_call, vmap

    make = CategoricalMLPPolicy if discrete else GaussianMLPPolicy
    policy = make(3, 2, (8, 6), "elu", generator=gen(0))
    thetas = [parameters_of(make(3, 2, (8, 6), "elu", generator=gen(s))) for s in range(4)]
    if not discrete:
        thetas[1]["log_std"] = torch.full((2,), -30.0)  # below the floor: clamped on both paths
    stacked = {k: torch.stack([t[k] for t in thetas]).requires_grad_(True) for k in thetas[0]}
    obs = torch.randn(4, 5, 7, 3, generator=gen(9))
    fast = forward(policy, stacked, obs, per_task=True)
    slow = vmap(lambda p, o: functional_call(policy, p, (o,)))(stacked, obs)
    assert type(fast) is type(slow)
    for a, b in zip(fast, slow, strict=True):
        assert a.shape == b.shape == (4, 5, 7, 2)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    weights = torch.randn(4, 5, 7, 2, generator=gen(3))
    grads = [
        torch.autograd.grad(torch.stack([(w * t).sum() for t in d]).sum(), list(stacked.values()))
        for w, d in ((weights, fast), (weights, slow))
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_per_task_forward_of_a_custom_module_uses_vmap() -> None:
    """A subclass may override forward: it is evaluated as written, not as a plain MLP."""

    class Shifted(GaussianMLPPolicy):
        def forward(self, obs: torch.Tensor) -> Normal:
            dist = super().forward(obs)
            return Normal(dist.mean + 1.0, dist.log_std)

    policy = Shifted(3, 2, (8,), generator=gen(0))
    theta = parameters_of(policy)
    stacked = {k: v.expand(2, *v.shape) for k, v in theta.items()}
    obs = torch.randn(2, 5, 3, generator=gen(1))
    dist = forward(policy, stacked, obs, per_task=True)
    assert isinstance(dist, Normal)
    torch.testing.assert_close(dist.mean[1], policy(obs[1]).mean)


def test_sample_from_noise_has_right_moments() -> None:
    dist = Normal(torch.full((20000, 1), 2.0), torch.full((20000, 1), math.log(0.5)))
    noise = action_noise(Normal, (20000, 1), 3, 0, 1, dtype=torch.float64)[:, 0]
    a = sample(dist, noise)
    torch.testing.assert_close(a, 2.0 + 0.5 * noise)
    assert a.mean().item() == pytest.approx(2.0, abs=0.02)
    assert a.std().item() == pytest.approx(0.5, abs=0.02)
    cat = Categorical(torch.log(torch.tensor([[0.2, 0.3, 0.5]])).expand(40000, 3))
    gumbel = action_noise(Categorical, (40000, 3), seed=4, first_task=0, num_tasks=1)[:, 0]
    draws = sample(cat, gumbel)
    assert draws.shape == (40000,)
    frequencies = torch.bincount(draws, minlength=3).double() / len(draws)
    torch.testing.assert_close(
        frequencies, torch.tensor([0.2, 0.3, 0.5]).double(), atol=0.01, rtol=0
    )


def test_action_noise_is_per_task_and_independent_of_the_slice() -> None:
    whole = action_noise(Normal, (5, 4, 2), seed=7, first_task=0, num_tasks=6)
    assert whole.shape == (5, 6, 4, 2)
    part = action_noise(Normal, (5, 4, 2), seed=7, first_task=2, num_tasks=3)
    assert torch.equal(part, whole[:, 2:5])
    assert not torch.equal(whole[:, 0], whole[:, 1])
    assert not torch.equal(action_noise(Normal, (5, 4, 2), 8, 0, 6), whole)


def test_build_policy_picks_by_action_space_and_rejects_others() -> None:
    box = gym.spaces.Box(-1, 1, (3,), np.float32)
    assert isinstance(
        build_policy(box, gym.spaces.Box(-1, 1, (2,)), (8,), "tanh", 1.0), GaussianMLPPolicy
    )
    assert isinstance(
        build_policy(box, gym.spaces.Discrete(4), (8,), "tanh", 1.0), CategoricalMLPPolicy
    )
    with pytest.raises(ValueError, match="action space"):
        build_policy(box, gym.spaces.MultiBinary(3), (8,), "tanh", 1.0)
    with pytest.raises(ValueError, match="observation space"):
        build_policy(gym.spaces.Box(-1, 1, (2, 2)), gym.spaces.Discrete(2), (8,), "tanh", 1.0)
    with pytest.raises(ValueError, match="nonlinearity"):
        GaussianMLPPolicy(3, 2, (8,), "sigmoidish")


def test_min_std_config_floors_the_built_policy_std() -> None:
    """Config key min_std reaches the built policy: σ = max(exp(log_std), min_std), with no
    gradient to a log-std below the floor and the exact one above it."""
    from maml_rl.build import build
    from maml_rl.config import Config

    cfg = Config(env="navigation", min_std=0.2, meta_batch_size=2, fast_batch_size=2)
    _, policy, sampler = build(cfg, torch.Generator().manual_seed(0), num_tasks=2)
    sampler.close()
    assert isinstance(policy, GaussianMLPPolicy)
    assert policy.min_log_std == pytest.approx(math.log(0.2))
    obs = torch.zeros(1, 2, dtype=policy.log_std.dtype)
    for log_std, floored in ((-5.0, True), (-1.0, False)):
        params = {n: p.detach().clone() for n, p in policy.named_parameters()}
        params["log_std"] = torch.full_like(params["log_std"], log_std).requires_grad_(True)
        dist = forward(policy, params, obs)
        assert isinstance(dist, Normal)
        expected = math.log(0.2) if floored else log_std
        assert torch.allclose(dist.log_std, torch.full_like(dist.log_std, expected))
        (grad,) = torch.autograd.grad(log_prob(dist, obs + 1).sum(), params["log_std"])
        assert (grad == 0).all() == floored
