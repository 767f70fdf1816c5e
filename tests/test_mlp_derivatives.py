"""Closed-form derivative products of the Gaussian MLP against autograd, in float64."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from conftest import make_batch
from torch import nn

from maml_rl.config import Config
from maml_rl.curvature import ChunkedGaussNewtonHVP, GaussNewtonHVP, _per_task, _SecondOrder
from maml_rl.inner import init_step_size, reinforce_loss, step_sizes_of
from maml_rl.maml import (
    MetaParams,
    TaskData,
    _gauss_newton,
    _gauss_newton_gradient,
    _post_distribution,
    meta_objective,
)
from maml_rl.mlp_derivatives import GaussianFisher, ReinforceCurvature, supports
from maml_rl.policy import (
    CategoricalMLPPolicy,
    Distribution,
    GaussianMLPPolicy,
    detach,
    forward,
    kl,
    parameters_of,
)
from maml_rl.returns import masked_mean
from maml_rl.trpo import flat_grad
from maml_rl.types import Params

NONLINEARITIES = ("tanh", "relu", "elu")


def policy_and_phi(
    nonlinearity: str, num_tasks: int = 3, seed: int = 0
) -> tuple[GaussianMLPPolicy, Params]:
    """A float64 policy (two hidden layers) and distinct per-task params phi [N, *shape]."""
    policy = GaussianMLPPolicy(
        2, 2, (7, 5), nonlinearity, init_std=0.6, generator=torch.Generator().manual_seed(seed)
    ).double()
    g = torch.Generator().manual_seed(seed + 1)
    theta = parameters_of(policy)
    phi = {
        n: p.expand(num_tasks, *p.shape) + 0.3 * torch.randn(num_tasks, *p.shape, generator=g,
                                                              dtype=p.dtype)
        for n, p in theta.items()
    }  # fmt: skip
    return policy, phi


def random_tangent(phi: Params, seed: int = 3) -> Params:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in phi.items()}


def leaf(phi: Params) -> Params:
    return {n: p.detach().clone().requires_grad_(True) for n, p in phi.items()}


def assert_params_close(actual: Params, expected: Params, rtol: float = 1e-10) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        scale = expected[name].abs().max().clamp(min=1e-12)
        error = (actual[name] - expected[name]).abs().max() / scale
        assert error < rtol, (name, float(error))


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_reinforce_gradient_and_hessian_products_equal_autograd(nonlinearity: str) -> None:
    policy, phi = policy_and_phi(nonlinearity)
    batch, advantages = make_batch(7)
    params = leaf(phi)
    expected = _SecondOrder(params, reinforce_loss(policy, params, batch, advantages))
    closed = ReinforceCurvature(policy, phi, *_per_task(batch, advantages))
    assert_params_close(closed.grads, {n: g.detach() for n, g in expected.grads.items()})
    for seed in (3, 4):
        t = random_tangent(phi, seed)
        product = closed.product(t)
        reference = expected.product(t)
        assert all(reference[n].abs().max() > 1e-6 for n in reference)
        assert_params_close(product, reference)


def test_the_network_curvature_term_is_exercised() -> None:
    """The σ'' and δ·dW terms matter: dropping them (Gauss-Newton of the inner loss) is far
    from the exact product, so the test above could not pass without them."""
    policy, phi = policy_and_phi("tanh")
    batch, advantages = make_batch(7)
    closed = ReinforceCurvature(policy, phi, *_per_task(batch, advantages))
    t = random_tangent(phi)
    exact = closed.product(t)
    closed.curvature = [None if c is None else torch.zeros_like(c) for c in closed.curvature]
    closed.deltas = [torch.zeros_like(d) for d in closed.deltas[:-1]] + closed.deltas[-1:]
    partial = closed.product(t)
    weight = "mean.2.weight"
    assert (partial[weight] - exact[weight]).norm() > 0.05 * exact[weight].norm()


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_fisher_product_equals_the_autograd_hessian_of_the_kl(nonlinearity: str) -> None:
    policy, phi = policy_and_phi(nonlinearity)
    batch, _ = make_batch(8)
    obs = batch.observations.movedim(1, 0)
    with torch.no_grad():
        old = detach(forward(policy, phi, obs, per_task=True))
    params = leaf(phi)
    for direction in ("old_new", "new_old"):
        dist = forward(policy, params, obs, per_task=True)
        divergence = kl(old, dist) if direction == "old_new" else kl(dist, old)
        kls = masked_mean(divergence, batch.step_weights.movedim(1, 0), dim=(1, 2))
        expected = _SecondOrder(params, kls)
        fisher = GaussianFisher(
            policy, phi, *_per_task(batch, torch.zeros_like(batch.rewards))[::3]
        )
        t = random_tangent(phi)
        assert_params_close(fisher.product(t), expected.product(t))


def test_log_stds_at_the_floor_have_zero_derivative_as_under_autograd() -> None:
    policy, phi = policy_and_phi("tanh")
    policy.min_log_std = -0.5
    phi["log_std"] = torch.tensor([[-0.2, -0.9]] * 3, dtype=torch.float64)  # second clamped
    batch, advantages = make_batch(9)
    params = leaf(phi)
    expected = _SecondOrder(params, reinforce_loss(policy, params, batch, advantages))
    closed = ReinforceCurvature(policy, phi, *_per_task(batch, advantages))
    assert (closed.grads["log_std"][:, 1] == 0).all()
    assert_params_close(closed.grads, {n: g.detach() for n, g in expected.grads.items()})
    t = random_tangent(phi)
    assert_params_close(closed.product(t), expected.product(t))


def test_supports_only_what_it_can_differentiate() -> None:
    assert supports(policy_and_phi("tanh")[0])
    assert not supports(policy_and_phi("gelu")[0])
    assert not supports(CategoricalMLPPolicy(2, 3, (4,)))
    elu = GaussianMLPPolicy(2, 2, (4,), "elu")
    activation = elu.mean[1]
    assert isinstance(activation, nn.ELU)
    activation.alpha = 0.5
    assert not supports(elu)


def setup(
    num_steps: int, mode: str, first_order: bool = False, nonlinearity: str = "tanh"
) -> tuple[Config, GaussianMLPPolicy, MetaParams, torch.Tensor, TaskData, Distribution]:
    cfg = Config(fast_lr=0.1, learn_step_size=mode, first_order=first_order, hvp="gauss_newton")
    policy = GaussianMLPPolicy(
        2, 2, (8, 8), nonlinearity, init_std=0.7, generator=torch.Generator().manual_seed(0)
    ).double()
    theta = parameters_of(policy)
    step_size = init_step_size(theta, mode, 0.1, num_steps)
    layout = MetaParams.of(theta, step_size)
    x0 = layout.flatten(theta, step_size)
    data = TaskData(tuple(make_batch(10 + i) for i in range(num_steps)), *make_batch(110))
    with torch.no_grad():
        old = detach(_post_distribution(policy, layout, x0, data, cfg))
    return cfg, policy, layout, x0, data, old


@pytest.mark.parametrize("num_steps", [0, 1, 2])
@pytest.mark.parametrize("mode", ["none", "scalar", "per_step", "per_parameter"])
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_meta_gradient_by_the_adjoint_recursion_equals_autograd(
    num_steps: int, mode: str, nonlinearity: str
) -> None:
    cfg, policy, layout, x0, data, old = setup(num_steps, mode, nonlinearity=nonlinearity)
    x = x0.clone().requires_grad_(True)
    expected = flat_grad(meta_objective(policy, layout, x, data, old, cfg)[0], [x])
    curvature: ChunkedGaussNewtonHVP | GaussNewtonHVP
    for closed_form in (True, False):
        curvature = _gauss_newton(policy, layout, x0, data, old, cfg, None)
        if not closed_form:  # the autograd products and surrogate gradient of curvature.py
            theta, steps = layout.unflatten(x0)
            sizes = step_sizes_of(steps, 0.1, num_steps)
            curvature = GaussNewtonHVP(
                policy, theta, sizes, data.inner, data.post, old, None, closed_form=False
            )
        assert curvature.closed_form is closed_form
        grad = _gauss_newton_gradient(curvature, policy, layout, x0, data, cfg)
        error = (grad - expected).norm() / expected.norm()
        assert error < 1e-10, (closed_form, float(error))


def test_emaml_meta_gradient_keeps_its_score_term() -> None:
    cfg, policy, layout, x0, data, old = setup(1, "none")
    cfg = dataclasses.replace(cfg, meta_gradient="emaml")
    x = x0.clone().requires_grad_(True)
    expected = flat_grad(meta_objective(policy, layout, x, data, old, cfg)[0], [x])
    curvature = _gauss_newton(policy, layout, x0, data, old, cfg, None)
    grad = _gauss_newton_gradient(curvature, policy, layout, x0, data, cfg)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_estimators_with_other_inner_losses_use_the_autograd_products() -> None:
    cfg, policy, layout, x0, data, old = setup(1, "none")
    for estimator, closed_form in (("maml", True), ("lvc", False), ("dice", False)):
        curvature = _gauss_newton(
            policy, layout, x0, data, old, dataclasses.replace(cfg, meta_gradient=estimator), None
        )
        assert curvature.closed_form is closed_form


@pytest.mark.parametrize("mode", ["none", "scalar", "per_step", "per_parameter"])
def test_first_order_meta_gradient_by_the_recursion_equals_autograd(mode: str) -> None:
    """First-order MAML: the linear model phi = theta - alpha g with g frozen (inner.adapt)."""
    from maml_rl.inner import first_order_gradients

    cfg, policy, layout, x0, data, old = setup(2, mode)
    cfg = dataclasses.replace(cfg, first_order=True)
    theta, steps = layout.unflatten(x0)
    frozen = first_order_gradients(policy, theta, data.inner, step_sizes_of(steps, 0.1, 2))
    x = x0.clone().requires_grad_(True)
    expected = flat_grad(meta_objective(policy, layout, x, data, old, cfg, frozen)[0], [x])
    curvature = _gauss_newton(policy, layout, x0, data, old, cfg, frozen)
    grad = _gauss_newton_gradient(curvature, policy, layout, x0, data, cfg)
    assert ((grad - expected).norm() / expected.norm()).item() < 1e-10


@pytest.mark.parametrize("tasks_per_chunk", [1, 2])  # of 3 tasks
@pytest.mark.parametrize("closed_form", [True, False])
def test_chunked_products_equal_the_products_over_all_tasks(
    tasks_per_chunk: int, closed_form: bool
) -> None:
    """ChunkedGaussNewtonHVP: products, meta-gradient and π_old of chunks of tasks, summed,
    equal one GaussNewtonHVP over every task (float64), unequal chunks included."""
    from maml_rl.curvature import ChunkedGaussNewtonHVP

    _cfg, policy, layout, x0, data, old = setup(2, "per_parameter")
    theta, steps = layout.unflatten(x0)
    build = functools.partial(GaussNewtonHVP, policy, theta, [steps] * 2, closed_form=closed_form)
    whole = build(data.inner, data.post, None, None)
    chunked = ChunkedGaussNewtonHVP(
        build, data.inner, data.post, None, None, tasks_per_chunk=tasks_per_chunk
    )
    assert len(chunked.parts) == -(-data.post.num_tasks // tasks_per_chunk) > 1
    for a, b in zip(chunked.old_dist, whole.old_dist, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(chunked.old_dist, old, strict=True):  # and π_old of maml.py's adaptation
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    v_theta, v_step = layout.unflatten(v)
    for got, want in (
        (chunked(v_theta, v_step), whole(v_theta, v_step)),
        (
            chunked.meta_gradient(data.post_advantages, steps),
            whole.meta_gradient(data.post_advantages, steps),
        ),
    ):
        for part_got, part_want in zip(got, want, strict=True):
            assert set(part_got) == set(part_want) and part_want
            for k in part_want:
                torch.testing.assert_close(part_got[k], part_want[k], rtol=1e-10, atol=1e-13)
