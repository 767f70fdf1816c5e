"""The meta-objective and the TRPO meta-step, checked against finite differences in float64."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import make_batch, make_policy

from maml_rl.config import Config
from maml_rl.inner import adapt, first_order_gradients, init_step_size, step_sizes_of
from maml_rl.maml import (
    MetaParams,
    TaskData,
    _damped,
    _gauss_newton,
    _make_hvp,
    _post_distribution,
    first_tasks,
    meta_objective,
    meta_step,
)
from maml_rl.policy import Distribution, GaussianMLPPolicy, Normal, detach, forward, log_prob
from maml_rl.returns import masked_mean
from maml_rl.trpo import conjugate_gradient, flat_grad, max_step_length
from maml_rl.types import Batch, Params


def task_data(num_steps: int, seed: int = 10) -> TaskData:
    inner = tuple(make_batch(seed + i) for i in range(num_steps))
    post, post_advantages = make_batch(seed + 100)
    return TaskData(inner, post, post_advantages)


def setup(
    num_steps: int, first_order: bool = False, mode: str = "none", **kw: Any
) -> tuple[
    Config,
    GaussianMLPPolicy,
    Params,
    Params,
    MetaParams,
    torch.Tensor,
    TaskData,
    Distribution,
]:
    cfg = Config(fast_lr=0.1, first_order=first_order, learn_step_size=mode, **kw)
    policy, theta = make_policy()
    step_size = init_step_size(theta, mode, 0.1, num_steps)
    layout = MetaParams.of(theta, step_size)
    x0 = layout.flatten(theta, step_size)
    data = task_data(num_steps)
    with torch.no_grad():
        old = detach(_post_distribution(policy, layout, x0, data, cfg))
    return cfg, policy, theta, step_size, layout, x0, data, old


def central_difference(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor, h: float = 1e-6
) -> float:
    with torch.no_grad():
        return (f(x + h * v) - f(x - h * v)).item() / (2 * h)


@pytest.mark.parametrize("num_steps", [1, 2])
@pytest.mark.parametrize("mode", ["none", "scalar", "per_step", "per_parameter"])
def test_meta_gradient_equals_finite_difference(num_steps: int, mode: str) -> None:
    cfg, policy, _, _, layout, x0, data, old = setup(num_steps, mode=mode)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return meta_objective(policy, layout, x, data, old, cfg)[0]

    # move away from x0 so the importance ratio is not 1 everywhere
    x1 = x0 + 0.05 * torch.randn(
        x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype
    )
    x = x1.clone().requires_grad_(True)
    grad = flat_grad(loss(x), [x])
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        assert (grad @ v).item() == pytest.approx(
            central_difference(loss, x1, v), rel=1e-6, abs=1e-9
        )


@pytest.mark.parametrize("num_steps", [1, 2])
def test_first_order_gradient_is_the_gradient_at_phi(num_steps: int) -> None:
    cfg, policy, theta, _, layout, x0, data, old = setup(num_steps, first_order=True)
    x = x0.clone().requires_grad_(True)
    first_order = flat_grad(meta_objective(policy, layout, x, data, old, cfg)[0], [x])

    # gradient of the post-update loss with respect to the adapted parameters, summed over tasks
    with torch.no_grad():
        phi = adapt(policy, theta, data.inner, [0.1] * num_steps, first_order=True)
    phi = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    post = data.post
    dist = forward(policy, phi, post.observations.movedim(1, 0), per_task=True)
    actions = post.actions.movedim(1, 0)
    ratio = torch.exp(log_prob(dist, actions) - log_prob(old, actions))
    loss = -masked_mean(ratio * data.post_advantages.movedim(1, 0), post.mask.movedim(1, 0), (1, 2))
    grads = torch.autograd.grad(loss.mean(), list(phi.values()))
    at_phi = torch.cat([g.sum(0).reshape(-1) for g in grads])
    torch.testing.assert_close(first_order, at_phi, rtol=1e-10, atol=1e-12)
    # the frozen-gradient linear model used by meta_step has the same gradient
    frozen = first_order_gradients(policy, theta, data.inner, [0.1] * num_steps)
    x = x0.clone().requires_grad_(True)
    linear = flat_grad(meta_objective(policy, layout, x, data, old, cfg, frozen)[0], [x])
    torch.testing.assert_close(linear, at_phi, rtol=1e-10, atol=1e-12)

    # and it differs from the second-order meta-gradient (the test can tell them apart)
    cfg2 = dataclasses.replace(cfg, first_order=False)
    x = x0.clone().requires_grad_(True)
    second_order = flat_grad(meta_objective(policy, layout, x, data, old, cfg2)[0], [x])
    assert (second_order - first_order).norm() > 1e-3 * first_order.norm()


def test_kl_at_the_old_parameters_is_zero_with_zero_gradient() -> None:
    cfg, policy, _, _, layout, x0, data, old = setup(2)
    x = x0.clone().requires_grad_(True)
    loss, kl = meta_objective(policy, layout, x, data, old, cfg)
    assert kl.item() == pytest.approx(0.0, abs=1e-14)
    assert flat_grad(kl, [x]).abs().max().item() < 1e-12
    # at x0 the importance ratio is 1: the surrogate is minus the mean advantage
    expected = -masked_mean(data.post_advantages, data.post.mask, dim=(0, 2)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_finite_difference_hvp_matches_exact_on_the_policy_kl(first_order: bool) -> None:
    results = {}
    for hvp in ("exact", "finite_difference"):
        cfg, policy, _, _, layout, x0, data, old = setup(1, first_order, hvp=hvp, cg_damping=0.0)
        x = x0.clone().requires_grad_(True)
        kl = meta_objective(policy, layout, x, data, old, cfg)[1]

        v0 = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=x0.dtype)
        frozen = None
        if first_order:
            theta, steps = layout.unflatten(x0)
            frozen = first_order_gradients(policy, theta, data.inner, [steps or 0.1])

        def objective(
            y: torch.Tensor,
            policy: GaussianMLPPolicy = policy,
            layout: MetaParams = layout,
            data: TaskData = data,
            old: Distribution = old,
            cfg: Config = cfg,
            fz: list[Params] | None = frozen,
        ) -> torch.Tensor:
            return meta_objective(policy, layout, y, data, old, cfg, fz)[1]

        product = _make_hvp(objective, x, kl, cfg)
        assert torch.allclose(product(v0), _make_hvp(objective, x, None, cfg)(v0))
        v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=x0.dtype)
        results[hvp] = product(v)
    exact, approx = results["exact"], results["finite_difference"]
    assert exact.norm() > 0
    assert ((approx - exact).norm() / exact.norm()).item() < 1e-3


GAUSS_NEWTON_CASES = [(0, "none", False)] + [
    (steps, mode, first_order)
    for steps in (1, 2)
    for mode in ("none", "scalar", "per_step", "per_parameter")
    for first_order in (False, True)
]


@pytest.mark.parametrize(("num_steps", "mode", "first_order"), GAUSS_NEWTON_CASES)
def test_gauss_newton_hvp_equals_exact(num_steps: int, mode: str, first_order: bool) -> None:
    """J^T F J v equals the double-backward Hessian product of the meta-KL at x0 (0 inner
    steps: plain TRPO, where step sizes and first order do not apply)."""
    cfg, policy, _, _, layout, x0, data, old = setup(
        num_steps, first_order, mode=mode, cg_damping=0.0
    )
    if num_steps == 0:  # plain TRPO (pretrained, oracle): phi = theta for every task
        data = TaskData((), data.post, data.post_advantages)
        with torch.no_grad():
            old = detach(_post_distribution(policy, layout, x0, data, cfg))
    frozen = None
    if first_order:
        theta, steps = layout.unflatten(x0)
        sizes = step_sizes_of(steps, 0.1, num_steps)
        frozen = first_order_gradients(policy, theta, data.inner, sizes)

    def kl_fn(y: torch.Tensor) -> torch.Tensor:
        return meta_objective(policy, layout, y, data, old, cfg, frozen)[1]

    exact = _make_hvp(kl_fn, x0.clone().requires_grad_(True), None, cfg)
    gauss_newton = _damped(_gauss_newton(policy, layout, x0, data, old, cfg, frozen), layout, cfg)
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        v = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        expected = exact(v)
        assert expected.norm() > 0
        error = (gauss_newton(v) - expected).norm() / expected.norm()
        assert error.item() < 1e-8  # measured 3e-11 to 1.2e-9
    # the step-size block is not vacuous: it couples with theta
    if mode != "none":
        offset = sum(p.numel() for p in layout.unflatten(x0)[0].values())
        e = torch.zeros_like(x0)
        e[offset] = 1.0
        assert gauss_newton(e)[:offset].abs().max() > 1e-8
    # damping is added once
    damped = _damped(
        _gauss_newton(policy, layout, x0, data, old, cfg, frozen),
        layout,
        dataclasses.replace(cfg, cg_damping=0.5),
    )
    torch.testing.assert_close(damped(v) - gauss_newton(v), 0.5 * v)


@pytest.mark.parametrize("subsample", [1.0, 1 / 3])
def test_gauss_newton_meta_step_equals_exact(subsample: float) -> None:
    steps = {}
    for hvp in ("exact", "gauss_newton"):
        cfg, policy, theta, step_size, *_ = setup(1, hvp=hvp, max_kl=1e-3, hvp_subsample=subsample)
        new_theta, _, info = meta_step(policy, theta, step_size, task_data(1), cfg)
        assert info.accepted
        steps[hvp] = (info.max_step_length, new_theta)
    assert steps["gauss_newton"][0] == pytest.approx(steps["exact"][0], rel=1e-7)
    for k, v in steps["exact"][1].items():
        torch.testing.assert_close(steps["gauss_newton"][1][k], v, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("hvp", ["finite_difference", "exact", "gauss_newton"])
def test_meta_step_is_the_natural_gradient_step_of_the_closed_form(hvp: str) -> None:
    """The accepted step equals -f·sqrt(2δ / gᵀH⁻¹g)·H⁻¹g with H the damped meta-KL Hessian built
    as a full matrix by double backward and inverted directly (f = ratio^k of the line search),
    so a wrong sign, step length, curvature or CG shows here, not only a failed line search."""
    cfg, policy, theta, step_size, layout, x0, data, old = setup(
        1, hvp=hvp, max_kl=1e-3, cg_iters=400, cg_damping=1e-2
    )
    new_theta, _, info = meta_step(policy, theta, step_size, data, cfg)
    assert info.accepted
    x = x0.clone().requires_grad_(True)
    loss, kl = meta_objective(policy, layout, x, data, old, cfg)
    g = flat_grad(loss, [x], retain_graph=True)
    kl_grad = flat_grad(kl, [x], create_graph=True)
    hessian = torch.stack([torch.autograd.grad(kl_grad[i], x, retain_graph=True)[0]
                           for i in range(len(x0))])  # fmt: skip
    damped = hessian + cfg.cg_damping * torch.eye(len(x0), dtype=x0.dtype)
    direction = torch.linalg.solve(damped, g)
    beta = torch.sqrt(2 * cfg.max_kl / (g @ direction))
    expected = x0 - info.step_fraction * beta * direction
    moved = layout.flatten(new_theta, {})
    error = (moved - expected).norm() / (expected - x0).norm()
    assert error.item() < (2e-2 if hvp == "finite_difference" else 1e-4), error.item()
    assert info.step_fraction == pytest.approx(
        cfg.ls_backtrack_ratio ** (info.line_search_steps - 1)
    )


def test_meta_step_without_an_admissible_step_leaves_theta_bit_for_bit() -> None:
    cfg, policy, theta, step_size, *_ = setup(1, mode="scalar")
    data = task_data(1)
    # zero post-update advantages: the surrogate is 0 for every x and can never improve
    flat = TaskData(data.inner, data.post, torch.zeros_like(data.post_advantages))
    before = {k: v.clone() for k, v in theta.items()}
    new_theta, new_step, info = meta_step(policy, theta, step_size, flat, cfg)
    assert not info.accepted
    assert all(torch.equal(new_theta[k], before[k]) for k in theta)
    assert torch.equal(new_step["_scalar"], step_size["_scalar"])


@pytest.mark.parametrize("hvp", ["finite_difference", "exact"])
def test_hvp_subsample_uses_the_curvature_of_the_first_tasks(hvp: str) -> None:
    """hvp_subsample=1/3 of 3 tasks: the product is that of the KL of task 0 alone."""
    cfg, policy, _, _, layout, x0, data, old = setup(1, hvp=hvp, cg_damping=0.0)
    sub_data, sub_old = first_tasks(data, old, 1)
    assert isinstance(sub_old, Normal)
    assert sub_data.post.num_tasks == 1 and sub_old.mean.shape[0] == 1
    assert torch.equal(sub_data.inner[0][0].observations, data.inner[0][0].observations[:, :1])
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=x0.dtype)
    products = []
    for d, o in ((sub_data, sub_old), (data, old)):
        x = x0.clone().requires_grad_(True)

        def kl_fn(y: torch.Tensor, d: TaskData = d, o: Distribution = o) -> torch.Tensor:
            return meta_objective(policy, layout, y, d, o, cfg)[1]

        products.append(_make_hvp(kl_fn, x, None, cfg)(v))
    assert (products[0] - products[1]).norm() > 1e-3 * products[1].norm()
    # meta_step with hvp_subsample=1/3 computes its step from the subset's curvature
    cfg_sub = dataclasses.replace(cfg, hvp_subsample=1 / 3, max_kl=1e-3)
    x = x0.clone().requires_grad_(True)
    grad = flat_grad(meta_objective(policy, layout, x, data, old, cfg_sub)[0], [x])

    def sub_kl(y: torch.Tensor) -> torch.Tensor:
        return meta_objective(policy, layout, y, sub_data, sub_old, cfg_sub)[1]

    product = _make_hvp(sub_kl, x, None, cfg_sub)
    direction = conjugate_gradient(product, grad, iters=cfg_sub.cg_iters)
    expected_beta = max_step_length(direction, product(direction), cfg_sub.max_kl)
    _, theta = make_policy()
    _, _, info = meta_step(policy, theta, {}, data, cfg_sub)
    assert info.max_step_length == pytest.approx(expected_beta.item(), rel=1e-6)
    assert info.accepted and info.kl_after <= 1e-3
    assert set(info.timings) == {"adaptation_s", "meta_gradient_s", "cg_s", "line_search_s"}


def test_finite_difference_hvp_in_float32_at_production_size() -> None:
    """The shipped configs run in float32 with a 64x64 policy: there the finite-difference
    product (auto eps) must still agree with the exact Gauss-Newton one to 0.1 %."""
    from maml_rl.policy import GaussianMLPPolicy, parameters_of

    policy = GaussianMLPPolicy(2, 2, (64, 64), "tanh", generator=torch.Generator().manual_seed(0))
    theta = parameters_of(policy)
    cfg = Config(fast_lr=0.1, cg_damping=0.0, hvp="finite_difference")
    layout = MetaParams.of(theta, {})
    x0 = layout.flatten(theta, {})

    def as_float32(pair: tuple[Batch, torch.Tensor]) -> tuple[Batch, torch.Tensor]:
        batch, advantages = pair
        fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
        # Batch's fields by name: tensors, and None for the optional ones
        single: dict[str, Any] = {k: None if v is None else v.float() for k, v in fields.items()}
        return type(batch)(**single), advantages.float()

    inner = as_float32(make_batch(10, num_tasks=4, horizon=25, k=10))
    post, post_adv = as_float32(make_batch(11, num_tasks=4, horizon=25, k=10))
    data = TaskData((inner,), post, post_adv)
    with torch.no_grad():
        old = detach(_post_distribution(policy, layout, x0, data, cfg))

    def kl_fn(y: torch.Tensor) -> torch.Tensor:
        return meta_objective(policy, layout, y, data, old, cfg)[1]

    fd = _make_hvp(kl_fn, x0.clone().requires_grad_(True), None, cfg)
    gauss_newton = _damped(_gauss_newton(policy, layout, x0, data, old, cfg, None), layout, cfg)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(x0.shape, generator=g)
        expected = gauss_newton(v)
        error = ((fd(v) - expected).norm() / expected.norm()).item()
        assert error < 1e-3, error  # measured 4e-5 to 5e-5


@pytest.mark.parametrize("statistics", ["steps", "episodes"])
def test_advantages_divided_by_the_variance_are_the_unit_variance_ones_over_sigma(
    statistics: str,
) -> None:
    from maml_rl.maml import batch_advantages
    from maml_rl.returns import loss_weights

    batch, _ = make_batch(3, horizon=8)
    cfg = Config(advantage_statistics=statistics)
    unit = batch_advantages(batch, cfg)
    raw = batch_advantages(batch, dataclasses.replace(cfg, normalize_advantages=False))
    u = loss_weights(batch.mask, statistics)
    centred = raw - masked_mean(raw, u, dim=(0, 2), keepdim=True)
    sigma = masked_mean(centred.square(), u, dim=(0, 2), keepdim=True).sqrt()
    by_variance = batch_advantages(batch, dataclasses.replace(cfg, advantage_scale="variance"))
    # (A - mu) / (sigma^2 + eps) = [(A - mu) / (sigma + eps)] * (sigma + eps) / (sigma^2 + eps)
    expected = unit * (sigma + 1e-8) / (sigma.square() + 1e-8) * batch.mask
    torch.testing.assert_close(by_variance, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(by_variance, unit)
