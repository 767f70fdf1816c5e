"""ProMP's outer step (promp.py): the clipped objective and the inner KL penalty against
hand-computed values, descent on a fixed batch, and non-finite steps never applied (float64)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import make_batch, make_policy

from maml_rl.config import Config
from maml_rl.maml import MetaParams, TaskData
from maml_rl.policy import Distribution, GaussianMLPPolicy, detach, forward, kl, log_prob
from maml_rl.promp import _distributions, _path, clipped_surrogate, promp_objective, promp_step
from maml_rl.types import Params


def test_clipped_surrogate_by_hand() -> None:
    ratio = torch.tensor([0.5, 1.0, 1.5, 0.5, 1.5], dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0, 2.0, -2.0, -1.0], dtype=torch.float64)
    # min(rA, clip(r, 0.7, 1.3) A): 0.5 | -1 | min(3, 2.6) | min(-1, -1.4) | min(-1.5, -1.3)
    expected = torch.tensor([0.5, -1.0, 2.6, -1.4, -1.5], dtype=torch.float64)
    torch.testing.assert_close(clipped_surrogate(ratio, advantages, 0.3), expected)


def setup(
    **kw: Any,
) -> tuple[
    Config, GaussianMLPPolicy, Params, MetaParams, torch.Tensor, TaskData, list[Distribution]
]:
    cfg = Config(fast_lr=0.1, outer="promp", meta_gradient="lvc", **kw)
    policy, theta = make_policy()
    layout = MetaParams.of(theta, {})
    x0 = layout.flatten(theta, {})
    inner, post = make_batch(30), make_batch(130)
    data = TaskData((inner,), post[0], post[1])
    with torch.no_grad():
        old = [
            detach(d) for d in _distributions(policy, _path(policy, layout, x0, data, cfg), data)
        ]
    return cfg, policy, theta, layout, x0, data, old


def test_objective_and_inner_kl_penalty_by_hand() -> None:
    cfg, policy, _, layout, x0, data, old = setup(
        promp_inner_kl=0.5, promp_clip=0.2, loss_weighting="steps", kl_direction="old_new"
    )  # the conventions of the hand computation below
    loss, surrogate, inner_kl = promp_objective(policy, layout, x0, data, old, cfg)
    mask = data.post.mask
    mean_adv = ((data.post_advantages * mask).sum(dim=(0, 2)) / mask.sum(dim=(0, 2))).mean()
    assert surrogate.item() == pytest.approx(-mean_adv.item(), rel=1e-12)  # ratio 1 at x0
    assert inner_kl.item() == pytest.approx(0.0, abs=1e-14) and loss.item() == surrogate.item()

    x1 = x0 + 0.1 * torch.randn(
        x0.shape, generator=torch.Generator().manual_seed(3), dtype=x0.dtype
    )
    loss, surrogate, inner_kl = promp_objective(policy, layout, x1, data, old, cfg)
    theta1, _ = layout.unflatten(x1)
    batch = data.inner[0][0]
    new_pre = forward(policy, theta1, batch.observations)  # φ_0 = θ on the inner batch
    old_pre = type(old[0])(*(t.movedim(0, 1) for t in old[0]))  # [T, N, K, A]
    per_step = kl(old_pre, new_pre)
    expected_kl = ((per_step * batch.mask).sum(dim=(0, 2)) / batch.mask.sum(dim=(0, 2))).mean()
    assert inner_kl.item() == pytest.approx(expected_kl.item(), rel=1e-10)
    post_now = _distributions(policy, _path(policy, layout, x1, data, cfg), data)[-1]
    actions = data.post.actions.movedim(1, 0)
    ratio = torch.exp(log_prob(post_now, actions) - log_prob(old[-1], actions))
    adv = data.post_advantages.movedim(1, 0)
    # A >= 0: the ratio counts up to 1 + ε; A < 0: down to 1 − ε (the pessimistic bound)
    terms = torch.where(adv >= 0, ratio.clamp(max=1.2) * adv, ratio.clamp(min=0.8) * adv)
    weights = data.post.mask.movedim(1, 0)
    expected = -((terms * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2))).mean()
    assert surrogate.item() == pytest.approx(expected.item(), rel=1e-10)
    assert loss.item() == pytest.approx(surrogate.item() + 0.5 * inner_kl.item(), rel=1e-12)
    assert (ratio > 1.2).any() or (ratio < 0.8).any()  # the clipping is exercised


def test_promp_step_descends_its_objective() -> None:
    cfg, policy, theta, _, _, data, _ = setup(promp_steps=5, promp_lr=1e-2)
    new_theta, _, info = promp_step(policy, theta, {}, data, cfg)
    assert info.accepted and info.line_search_steps == 5
    assert info.surrogate_after < info.surrogate_before
    assert any(not torch.equal(new_theta[k], theta[k]) for k in theta)
    assert info.kl_after > 0


def test_a_non_finite_step_is_never_applied() -> None:
    cfg, policy, theta, _, _, data, _ = setup()
    poisoned = data.post_advantages.clone()
    poisoned[0, 0, 0] = float("nan")
    bad = TaskData(data.inner, data.post, poisoned)
    new_theta, _, info = promp_step(policy, theta, {}, bad, cfg)
    assert not info.accepted and info.line_search_steps == 0
    assert all(torch.equal(new_theta[k], theta[k]) for k in theta)
