"""The conventions where maml_rl and pytorch-maml-rl differ, each pinned against a hand-written
float64 formula: per-episode weighting of the losses and KL (`loss_weighting`), per-episode
advantage statistics (`advantage_statistics`) and the direction of the trust-region KL
(`kl_direction`). The pytorch-maml-rl formulas are transcribed from its `weighted_mean`,
`weighted_normalize` and `kl_divergence(pi, old_pi)` (commit 21d4ba1)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from conftest import make_batch, make_policy

from maml_rl.baseline import advantages as compute_advantages
from maml_rl.config import Config, ConfigError, from_dict
from maml_rl.inner import reinforce_loss
from maml_rl.maml import (
    MetaParams,
    TaskData,
    _damped,
    _gauss_newton,
    _make_hvp,
    _post_distribution,
    meta_objective,
    weighted,
)
from maml_rl.policy import Distribution, GaussianMLPPolicy, detach, forward, kl, log_prob
from maml_rl.returns import episode_weights, loss_weights, masked_mean
from maml_rl.types import Batch


def lengths_of(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(0)


def pytorch_weighted_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pytorch-maml-rl's weighted_mean for one task: per-episode sums / lengths, [T, K] -> [K]."""
    return (x * mask).sum(0) / lengths_of(mask)


def test_episode_weights_by_hand() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    w = episode_weights(mask)
    expected = torch.tensor(
        [[0.25, 1.0, 0.0], [0.25, 0.0, 0.0], [0.25, 0.0, 0.0], [0.25, 0.0, 0.0]]
    )
    torch.testing.assert_close(w, expected)
    x = torch.arange(12, dtype=torch.float64).view(4, 3)
    # mean of the two non-empty episodes' means: (0+3+6+9)/4 = 4.5 and 1 -> 2.75
    assert masked_mean(x, w.double()).item() == pytest.approx(2.75)
    assert masked_mean(x, mask.double()).item() == pytest.approx((0 + 3 + 6 + 9 + 1) / 5)
    assert loss_weights(mask, "steps") is mask
    with pytest.raises(ValueError, match="unknown weighting 'tasks'"):
        loss_weights(mask, "tasks")


def test_episode_weighted_reinforce_loss_is_the_mean_of_episode_means() -> None:
    policy, theta = make_policy()
    batch, advantages = make_batch(3)
    n = batch.num_tasks
    params = {k: v.expand(n, *v.shape) for k, v in theta.items()}
    losses = reinforce_loss(
        policy, params, weighted(batch, Config(loss_weighting="episodes")), advantages
    )
    pooled = reinforce_loss(policy, params, batch, advantages)
    dist = forward(policy, theta, batch.observations)
    logp = log_prob(dist, batch.actions)  # [T, N, K]
    for task in range(n):
        m = batch.mask[:, task]
        terms = logp[:, task] * advantages[:, task]
        expected = -pytorch_weighted_mean(terms, m).mean()
        assert losses[task].item() == pytest.approx(expected.item(), rel=1e-12)
        assert pooled[task].item() == pytest.approx(
            (-(terms * m).sum() / m.sum()).item(), rel=1e-12
        )
    assert not torch.allclose(losses, pooled)  # the random lengths make them differ


def test_episode_advantage_statistics_match_weighted_normalize() -> None:
    batch, _ = make_batch(4, horizon=8, k=5)
    raw = compute_advantages(
        batch.observations, batch.rewards, batch.mask, gamma=0.99, gae_lambda=1.0, normalize=False
    )
    stats = episode_weights(batch.mask)
    adv = compute_advantages(
        batch.observations, batch.rewards, batch.mask, 0.99, 1.0, True, statistics_weights=stats
    )
    pooled = compute_advantages(batch.observations, batch.rewards, batch.mask, 0.99, 1.0, True)
    for task in range(batch.num_tasks):
        m, a = batch.mask[:, task], raw[:, task]
        # pytorch-maml-rl: mean of episode means, then std from the episode means of squares
        mean = pytorch_weighted_mean(a, m).mean()
        centred = (a - mean) * m
        std = torch.sqrt(pytorch_weighted_mean(centred**2, m).mean())
        torch.testing.assert_close(adv[:, task], centred / (std + 1e-8))
        pooled_mean = (a * m).sum() / m.sum()
        pooled_std = torch.sqrt((((a - pooled_mean) * m) ** 2).sum() / m.sum())
        torch.testing.assert_close(pooled[:, task], (a - pooled_mean) * m / (pooled_std + 1e-8))
    assert not torch.allclose(adv, pooled)


def weighted_setup(
    **kw: Any,
) -> tuple[Config, GaussianMLPPolicy, MetaParams, torch.Tensor, TaskData, Distribution]:
    cfg = Config(fast_lr=0.1, cg_damping=0.0, **kw)
    policy, theta = make_policy()
    layout = MetaParams.of(theta, {})
    x0 = layout.flatten(theta, {})
    inner, adv = make_batch(10)
    post, post_adv = make_batch(110)
    data = TaskData(((weighted(inner, cfg), adv),), weighted(post, cfg), post_adv)
    with torch.no_grad():
        old = detach(_post_distribution(policy, layout, x0, data, cfg))
    return cfg, policy, layout, x0, data, old


def test_kl_direction_and_episode_weights_in_the_meta_objective() -> None:
    cfg, policy, layout, x0, data, old = weighted_setup(
        kl_direction="new_old", loss_weighting="episodes"
    )
    x1 = x0 + 0.05 * torch.randn(
        x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype
    )
    loss, mean_kl = meta_objective(policy, layout, x1, data, old, cfg)
    new = _post_distribution(policy, layout, x1, data, cfg)
    post = data.post
    actions = post.actions.movedim(1, 0)
    divergence = kl(new, old)  # [N, T, K]
    ratio = torch.exp(log_prob(new, actions) - log_prob(old, actions))
    advantages = data.post_advantages.movedim(1, 0)
    expected_kl, expected_loss = [], []
    for task in range(post.num_tasks):
        m = post.mask[:, task]
        expected_kl.append(pytorch_weighted_mean(divergence[task], m).mean())
        expected_loss.append(-pytorch_weighted_mean(ratio[task] * advantages[task], m).mean())
    assert mean_kl.item() == pytest.approx(torch.stack(expected_kl).mean().item(), rel=1e-12)
    assert loss.item() == pytest.approx(torch.stack(expected_loss).mean().item(), rel=1e-12)
    old_new = meta_objective(
        policy, layout, x1, data, old, dataclasses.replace(cfg, kl_direction="old_new")
    )[1]
    assert abs(old_new.item() - mean_kl.item()) > 1e-6 * mean_kl.item()  # the directions differ


@pytest.mark.parametrize("direction", ["old_new", "new_old"])
@pytest.mark.parametrize("weighting", ["steps", "episodes"])
def test_gauss_newton_curvature_holds_for_every_convention(direction: str, weighting: str) -> None:
    """KL(old||new) and KL(new||old) share their Hessian at x0: the Gauss-Newton product (written
    for KL(old||new)) equals the double-backward product of the configured KL."""
    cfg, policy, layout, x0, data, old = weighted_setup(
        kl_direction=direction, loss_weighting=weighting, hvp="exact"
    )

    def kl_fn(y: torch.Tensor) -> torch.Tensor:
        return meta_objective(policy, layout, y, data, old, cfg)[1]

    exact = _make_hvp(kl_fn, x0.clone().requires_grad_(True), None, cfg)
    gauss_newton = _damped(_gauss_newton(policy, layout, x0, data, old, cfg, None), layout, cfg)
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=x0.dtype)
    expected = exact(v)
    assert ((gauss_newton(v) - expected).norm() / expected.norm()).item() < 1e-8


def test_batch_weights_travel_with_slices_and_concatenation() -> None:
    batch, _ = make_batch(1, num_tasks=4)
    w = episode_weights(batch.mask)
    heavy = batch.with_weights(w)
    torch.testing.assert_close(heavy.first_tasks(2).step_weights, w[:, :2])
    joined = Batch.concat_tasks([heavy.first_tasks(2), heavy.first_tasks(2)])
    torch.testing.assert_close(joined.step_weights, torch.cat([w[:, :2], w[:, :2]], dim=1))
    assert batch.step_weights is batch.mask
    with pytest.raises(ValueError, match="with and without weights"):
        Batch.concat_tasks([heavy, batch])
    with pytest.raises(ValueError, match="weights shape"):
        batch.with_weights(w[:, :1])


def test_convention_keys_are_checked() -> None:
    defaults = Config()
    # pytorch-maml-rl's three conventions are the defaults: with per-step advantage
    # statistics 2D navigation declined after 100 iterations, with per-step weighting alone
    # after 250 (docs/how-it-works.md, "Conventions")
    assert (defaults.loss_weighting, defaults.advantage_statistics, defaults.kl_direction) == (
        "episodes",
        "episodes",
        "new_old",
    )
    from maml_rl.cli import find_config
    from maml_rl.config import load

    shipped = load(find_config("navigation"))
    assert (shipped.loss_weighting, shipped.advantage_statistics) == ("episodes", "episodes")
    assert load(find_config("ant-vel")).advantage_statistics == "steps"
    with pytest.raises(ConfigError, match="config key 'kl_direction' must be one of"):
        from_dict({"kl_direction": "backwards"})
    with pytest.raises(ConfigError, match="config key 'loss_weighting' must be one of"):
        from_dict({"loss_weighting": "trajectories"})
