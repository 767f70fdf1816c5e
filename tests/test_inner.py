from __future__ import annotations

import pytest
import torch
from conftest import make_batch, make_policy
from torch import nn

from maml_rl.inner import (
    SCALAR_STEP_SIZE,
    adapt,
    alpha_of,
    expand_to_tasks,
    init_step_size,
    inner_step,
    reinforce_loss,
    step_sizes_of,
)
from maml_rl.policy import forward, log_prob
from maml_rl.types import Batch, Params


def loss_of_task(
    policy: nn.Module, theta: Params, batch: Batch, advantages: torch.Tensor, n: int
) -> torch.Tensor:
    """L_n(theta) written out for one task: -Σ m·logπ·A / Σ m."""
    dist = forward(policy, theta, batch.observations[:, n])
    logp = log_prob(dist, batch.actions[:, n])
    mask = batch.mask[:, n]
    return -(logp * advantages[:, n] * mask).sum() / mask.sum()


def test_reinforce_loss_matches_the_formula_per_task() -> None:
    policy, theta = make_policy()
    batch, advantages = make_batch(1)
    losses = reinforce_loss(policy, expand_to_tasks(theta, 3), batch, advantages)
    assert losses.shape == (3,)
    for n in range(3):
        torch.testing.assert_close(losses[n], loss_of_task(policy, theta, batch, advantages, n))


@pytest.mark.parametrize("mode", ["none", "scalar", "per_parameter"])
def test_inner_step_is_a_gradient_step_per_task(mode: str) -> None:
    policy, theta = make_policy()
    batch, advantages = make_batch(2)
    learned = init_step_size(theta, mode, 0.3)
    if mode == "per_parameter":  # distinct per-element step sizes
        g = torch.Generator().manual_seed(5)
        learned = {
            k: 0.1 + torch.rand(v.shape, generator=g, dtype=v.dtype) for k, v in learned.items()
        }
    step_size = learned or 0.3
    phi = inner_step(policy, expand_to_tasks(theta, 3), batch, advantages, step_size, True)
    for n in range(3):
        leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        grads = torch.autograd.grad(
            loss_of_task(policy, leaves, batch, advantages, n), list(leaves.values())
        )
        for (name, value), grad in zip(theta.items(), grads, strict=True):
            alpha = 0.3 if mode != "per_parameter" else learned[name]
            torch.testing.assert_close(phi[name][n], value - alpha * grad)


def test_init_step_size_shapes() -> None:
    _, theta = make_policy()
    assert init_step_size(theta, "none", 0.1) == {}
    scalar = init_step_size(theta, "scalar", 0.1)
    assert list(scalar) == [SCALAR_STEP_SIZE] and scalar[SCALAR_STEP_SIZE].shape == ()
    per = init_step_size(theta, "per_parameter", 0.1)
    steps = init_step_size(theta, "per_step", 0.1, num_steps=3)
    assert sorted(steps) == ["_step0", "_step1", "_step2"]
    assert all(v.shape == () for v in steps.values())
    assert {k: v.shape for k, v in per.items()} == {k: v.shape for k, v in theta.items()}
    with pytest.raises(ValueError):
        init_step_size(theta, "adam", 0.1)


def test_create_graph_switch() -> None:
    """Second order: dφ/dθ contains the Hessian term; first order: dφ/dθ is the identity."""
    policy, theta = make_policy()
    batch, advantages = make_batch(3)
    for create_graph, identity in ((False, True), (True, False)):
        leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        phi = inner_step(policy, expand_to_tasks(leaves, 3), batch, advantages, 0.5, create_graph)
        total = torch.stack([p.sum() for p in phi.values()]).sum()
        grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
        is_identity = all(torch.allclose(g, torch.full_like(g, 3.0)) for g in grads)
        assert is_identity == identity


def test_adapt_two_steps_equals_two_manual_steps_and_needs_no_grad_mode() -> None:
    policy, theta = make_policy()
    (b1, a1), (b2, a2) = make_batch(4), make_batch(5)
    with torch.no_grad():
        phi = adapt(policy, theta, [(b1, a1), (b2, a2)], [0.2, 0.1], first_order=True)
    manual = inner_step(policy, expand_to_tasks(theta, 3), b1, a1, 0.2, False)
    manual = inner_step(policy, manual, b2, a2, 0.1, False)
    for name in theta:
        torch.testing.assert_close(phi[name], manual[name])
        assert not torch.equal(phi[name], expand_to_tasks(theta, 3)[name])


def test_inputs_are_not_mutated() -> None:
    policy, theta = make_policy()
    batch, advantages = make_batch(6)
    before = {k: v.clone() for k, v in theta.items()}
    adv_before = advantages.clone()
    inner_step(policy, expand_to_tasks(theta, 3), batch, advantages, 0.5, True)
    assert all(torch.equal(before[k], theta[k]) for k in theta)
    assert torch.equal(adv_before, advantages)


def test_per_step_sizes_give_each_step_its_own_alpha() -> None:
    """step_sizes_of: step s uses alpha_s; steps past the learned ones use the last one; fixed
    and shared learned step sizes are the same for every step."""
    _, theta = make_policy()
    steps = {k: torch.tensor(0.1 * (i + 1)) for i, k in enumerate(["_step0", "_step1"])}
    sizes = step_sizes_of(steps, 0.5, 4)
    values = [float(alpha_of(s, "log_std")) for s in sizes]
    assert values == pytest.approx([0.1, 0.2, 0.2, 0.2])
    assert step_sizes_of({}, 0.5, 3) == [0.5, 0.5, 0.5]
    shared = init_step_size(theta, "scalar", 0.3)
    assert step_sizes_of(shared, 0.5, 2) == [shared, shared]
