"""Meta-gradient estimators (estimators.py) against closed forms and finite differences, float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import make_batch, make_policy
from torch import nn
from torch.func import functional_call

from maml_rl.config import Config
from maml_rl.estimators import emaml_loss, lvc_loss, standardised_returns
from maml_rl.inner import InnerObjective, adapt, reinforce_loss
from maml_rl.maml import (
    MetaParams,
    TaskData,
    _damped,
    _gauss_newton,
    _make_hvp,
    _post_distribution,
    meta_objective,
)
from maml_rl.policy import Distribution, GaussianMLPPolicy, Normal, detach, log_prob
from maml_rl.trpo import flat_grad
from maml_rl.types import Batch, Params


def flat_loss(
    policy: nn.Module,
    theta: Params,
    batch: Batch,
    advantages: torch.Tensor,
    loss_fn: InnerObjective,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, list[str], list[int]]:
    """The task-0 loss as a function of a flat parameter vector."""
    names = list(theta)
    sizes = [theta[n].numel() for n in names]

    def f(flat: torch.Tensor) -> torch.Tensor:
        params = {n: p.view(theta[n].shape) for n, p in zip(names, flat.split(sizes), strict=True)}
        per_task = {n: p.unsqueeze(0) for n, p in params.items()}
        return loss_fn(policy, per_task, batch, advantages)[0]

    return f, torch.cat([theta[n].reshape(-1) for n in names]), names, sizes


def test_lvc_has_reinforces_gradient_and_the_sampling_curvature_term() -> None:
    """∇L_lvc = ∇L_maml, ∇²L_lvc − ∇²L_maml = −mean_w(A ∇log π ∇log πᵀ) (ProMP, eq. 8)."""
    policy, theta = make_policy()
    batch, advantages = make_batch(5, num_tasks=1, horizon=4, k=3)
    f_maml, x, names, sizes = flat_loss(policy, theta, batch, advantages, reinforce_loss)
    f_lvc, *_ = flat_loss(policy, theta, batch, advantages, lvc_loss)
    g_maml = torch.func.grad(f_maml)(x)
    g_lvc = torch.func.grad(f_lvc)(x)
    torch.testing.assert_close(g_lvc, g_maml, rtol=1e-12, atol=1e-14)
    h_maml = torch.func.hessian(f_maml)(x)
    h_lvc = torch.func.hessian(f_lvc)(x)

    def logp(flat: torch.Tensor, t: int, k: int) -> torch.Tensor:
        params = {n: p.view(theta[n].shape) for n, p in zip(names, flat.split(sizes), strict=True)}
        dist = functional_call(policy, params, (batch.observations[t, 0, k],))
        return log_prob(dist, batch.actions[t, 0, k])

    outer = torch.zeros_like(h_maml)
    mask = batch.mask[:, 0]
    for t in range(mask.shape[0]):
        for k in range(mask.shape[1]):
            if mask[t, k]:
                score = torch.func.grad(logp)(x, t, k)
                outer += advantages[t, 0, k] * torch.outer(score, score)
    expected = -outer / mask.sum()
    assert expected.abs().max() > 1e-3  # the term is not vacuous
    torch.testing.assert_close(h_lvc - h_maml, expected, rtol=1e-9, atol=1e-11)


def setup(
    meta_gradient: str, num_steps: int = 1, **kw: Any
) -> tuple[Config, GaussianMLPPolicy, Params, MetaParams, torch.Tensor, TaskData, Distribution]:
    cfg = Config(fast_lr=0.1, meta_gradient=meta_gradient, cg_damping=0.0, **kw)
    policy, theta = make_policy()
    layout = MetaParams.of(theta, {})
    x0 = layout.flatten(theta, {})
    inner = tuple(make_batch(20 + i) for i in range(num_steps))
    post, post_adv = make_batch(120)
    data = TaskData(inner, post, post_adv)
    with torch.no_grad():
        old = detach(_post_distribution(policy, layout, x0, data, cfg))
    return cfg, policy, theta, layout, x0, data, old


@pytest.mark.parametrize("num_steps", [1, 2])
def test_emaml_meta_gradient_equals_finite_difference(num_steps: int) -> None:
    """E-MAML's objective is an ordinary function of θ: its gradient is its derivative. (LVC's
    is not: its value equals MAML's, its gradient deliberately is not that value's derivative,
    see the next test.)"""
    cfg, policy, _, layout, x0, data, old = setup("emaml", num_steps)
    x1 = x0 + 0.05 * torch.randn(
        x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype
    )

    def loss(x: torch.Tensor) -> torch.Tensor:
        return meta_objective(policy, layout, x, data, old, cfg)[0]

    x = x1.clone().requires_grad_(True)
    grad = flat_grad(loss(x), [x])
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        with torch.no_grad():
            fd = (loss(x1 + 1e-6 * v) - loss(x1 - 1e-6 * v)).item() / 2e-6
        assert (grad @ v).item() == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_lvc_meta_gradient_adds_the_sampling_curvature_through_the_adaptation() -> None:
    """One inner step: ∇_θ L = Σ_n (I − α H_n) u_n with u_n = ∂L/∂φ_n, so
    ∇L_lvc − ∇L_maml = α Σ_n mean_w(A s (sᵀ u_n)), s = ∇_θ log π_θ(a|s) on task n's pre batch."""
    grads = {}
    for name in ("maml", "lvc"):
        cfg, policy, theta, layout, x0, data, old = setup(name)
        x = x0.clone().requires_grad_(True)
        grads[name] = flat_grad(meta_objective(policy, layout, x, data, old, cfg)[0], [x])
    (batch, advantages), post = data.inner[0], data.post
    phi = adapt(policy, theta, data.inner, [0.1], True)
    phi = {n: p.detach().requires_grad_(True) for n, p in phi.items()}
    dist = torch.func.vmap(lambda p, o: functional_call(policy, p, (o,)))(
        phi, post.observations.movedim(1, 0)
    )
    actions = post.actions.movedim(1, 0)
    ratio = torch.exp(log_prob(dist, actions) - log_prob(old, actions))
    weights = post.mask.movedim(1, 0)
    per_task = (ratio * data.post_advantages.movedim(1, 0) * weights).sum(dim=(1, 2))
    loss = -(per_task / weights.sum(dim=(1, 2))).mean()
    names = list(theta)
    u_parts = torch.autograd.grad(loss, [phi[n] for n in names])
    u = torch.cat([g.flatten(start_dim=1) for g in u_parts], dim=1)  # [N, P]
    _, x_flat, _, sizes = flat_loss(policy, theta, batch, advantages, reinforce_loss)

    def logp(flat: torch.Tensor, t: int, n: int, k: int) -> torch.Tensor:
        params = {m: p.view(theta[m].shape) for m, p in zip(names, flat.split(sizes), strict=True)}
        return log_prob(functional_call(policy, params, (batch.observations[t, n, k],)),
                        batch.actions[t, n, k])  # fmt: skip

    expected = torch.zeros_like(x_flat)
    for n in range(batch.num_tasks):
        mask = batch.mask[:, n]
        for t in range(mask.shape[0]):
            for k in range(mask.shape[1]):
                if mask[t, k]:
                    score = torch.func.grad(logp)(x_flat, t, n, k)
                    expected += 0.1 * advantages[t, n, k] * score * (score @ u[n]) / mask.sum()
    assert expected.norm() > 1e-4 * grads["maml"].norm()
    torch.testing.assert_close(grads["lvc"] - grads["maml"], expected, rtol=1e-7, atol=1e-10)


def test_gauss_newton_follows_each_estimators_curvature() -> None:
    for name in ("maml", "lvc", "emaml", "dice"):
        cfg, policy, _, layout, x0, data, old = setup(name)

        def kl_fn(
            y: torch.Tensor,
            cfg: Config = cfg,
            policy: GaussianMLPPolicy = policy,
            layout: MetaParams = layout,
            data: TaskData = data,
            old: Distribution = old,
        ) -> torch.Tensor:
            return meta_objective(policy, layout, y, data, old, cfg)[1]

        exact = _make_hvp(
            kl_fn,
            x0.clone().requires_grad_(True),
            None,
            cfg.__class__(**{**cfg.__dict__, "hvp": "exact"}),
        )
        gauss_newton = _damped(_gauss_newton(policy, layout, x0, data, old, cfg, None), layout, cfg)
        v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=x0.dtype)
        expected = exact(v)
        assert ((gauss_newton(v) - expected).norm() / expected.norm()).item() < 1e-8


def test_emaml_adds_the_score_of_the_pre_update_trajectories() -> None:
    cfg, policy, theta, layout, x0, data, old = setup("emaml")
    maml_cfg = Config(fast_lr=0.1, cg_damping=0.0)
    x = x0.clone().requires_grad_(True)
    loss_emaml = meta_objective(policy, layout, x, data, old, cfg)[0]
    loss_maml = meta_objective(policy, layout, x, data, old, maml_cfg)[0]
    pre, post = data.inner[0][0], data.post
    extra = emaml_loss(policy, layout.unflatten(x)[0], pre, post)
    torch.testing.assert_close(loss_emaml, loss_maml + extra)
    # by hand: −(1/N) Σ_n Ĝ_n · mean over task n's valid steps of log π_θ(a|s)
    returns = post.episode_returns.mean(dim=1)
    g = (returns - returns.mean()) / (returns.std() + 1e-8)
    torch.testing.assert_close(standardised_returns(post), g)
    dist = torch.func.functional_call(policy, theta, (pre.observations,))
    logp = log_prob(dist, pre.actions) * pre.mask
    by_hand = -(g * logp.sum(dim=(0, 2)) / pre.mask.sum(dim=(0, 2))).mean()
    torch.testing.assert_close(extra, by_hand)


def test_maml_is_the_unchanged_reinforce_path() -> None:
    """meta_gradient: maml adapts with exactly the graph of the plain REINFORCE adaptation."""
    cfg, policy, _, layout, x0, data, old = setup("maml", 2)
    x = x0.clone().requires_grad_(True)
    grad = flat_grad(meta_objective(policy, layout, x, data, old, cfg)[0], [x])
    y = x0.clone().requires_grad_(True)
    theta_y, _ = layout.unflatten(y)
    phi = adapt(policy, theta_y, data.inner, [0.1, 0.1], False)  # no objective: REINFORCE
    dist = torch.func.vmap(lambda p, o: functional_call(policy, p, (o,)))(
        phi, data.post.observations.movedim(1, 0)
    )
    actions = data.post.actions.movedim(1, 0)
    ratio = torch.exp(log_prob(dist, actions) - log_prob(old, actions))
    weights = data.post.mask.movedim(1, 0)
    surrogate = (ratio * data.post_advantages.movedim(1, 0) * weights).sum(dim=(1, 2))
    reference = flat_grad(-(surrogate / weights.sum(dim=(1, 2))).mean(), [y])
    assert torch.equal(grad, reference) or torch.allclose(grad, reference, rtol=0, atol=1e-15)


def test_dice_derivatives_are_the_score_function_estimates_of_every_order() -> None:
    """With c_t = Σ_{t'≤t} log π_t', l_t = log π_t and (r̃, b̃, s) from dice_terms:
    ∇L = −(1/(K s)) Σ_k Σ_t (∇c_t r̃_t − ∇l_t b̃_t) (the discounted policy gradient with a
    baseline) and ∇²L = −(1/(K s)) Σ_k Σ_t ((∇²c_t + ∇c_t∇c_tᵀ) r̃_t − (∇²l_t + ∇l_t∇l_tᵀ) b̃_t)."""
    from maml_rl.estimators import dice_loss, dice_terms

    policy, theta = make_policy()
    batch, advantages = make_batch(7, num_tasks=1, horizon=4, k=3)

    def loss(
        policy: nn.Module, params: Params, batch: Batch, advantages: torch.Tensor
    ) -> torch.Tensor:
        return dice_loss(policy, params, batch, advantages, gamma=0.9)

    f, x, names, sizes = flat_loss(policy, theta, batch, advantages, loss)
    rewards, values, scale = dice_terms(batch, 0.9)

    def logp(flat: torch.Tensor, t: int, k: int) -> torch.Tensor:
        params = {n: p.view(theta[n].shape) for n, p in zip(names, flat.split(sizes), strict=True)}
        return log_prob(functional_call(policy, params, (batch.observations[t, 0, k],)),
                        batch.actions[t, 0, k])  # fmt: skip

    grad = torch.zeros_like(x)
    hessian = torch.zeros(len(x), len(x), dtype=x.dtype)
    mask = batch.mask[:, 0]
    for k in range(mask.shape[1]):
        c_grad, c_hess = torch.zeros_like(x), torch.zeros_like(hessian)
        for t in range(int(mask[:, k].sum())):
            l_grad = torch.func.grad(logp)(x, t, k)
            l_hess = torch.func.hessian(logp)(x, t, k)
            c_grad, c_hess = c_grad + l_grad, c_hess + l_hess
            r, b = rewards[t, 0, k], values[t, 0, k]
            grad += c_grad * r - l_grad * b
            hessian += (c_hess + torch.outer(c_grad, c_grad)) * r
            hessian -= (l_hess + torch.outer(l_grad, l_grad)) * b
    factor = -1.0 / (mask.shape[1] * scale[0])
    assert f(x).item() == pytest.approx(
        float(factor * (rewards - values).sum()), rel=1e-12
    )  # ⊡ = 1 in value: the objective's value is the discounted return minus the baseline
    torch.testing.assert_close(torch.func.grad(f)(x), factor * grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.func.hessian(f)(x), factor * hessian, rtol=1e-8, atol=1e-10)


def test_dice_adapts_the_same_way_when_sampling_and_in_the_meta_objective() -> None:
    """collect adapts with the estimator's inner loss: at x0 the surrogate's ratio is 1."""
    from maml_rl.build import Streams, build
    from maml_rl.maml import collect, draw_seeds

    cfg = Config(meta_gradient="dice", meta_batch_size=2, fast_batch_size=3, hidden_sizes=(8,),
                 env_kwargs={"max_episode_steps": 6}, dtype="float64", cg_iters=2)  # fmt: skip
    streams = Streams.from_seed(0)
    family, policy, sampler = build(cfg, streams.policy_init)
    theta = {n: p.detach().clone() for n, p in policy.named_parameters()}
    tasks = family.sample_tasks(2, streams.tasks)
    data, adapted = collect(sampler, theta, tasks, [0.1], draw_seeds(streams.environments, 2), cfg)
    layout = MetaParams.of(theta, {})
    x0 = layout.flatten(theta, {})
    with torch.no_grad():
        old = detach(_post_distribution(policy, layout, x0, data, cfg))
    assert isinstance(old, Normal)
    torch.testing.assert_close(old.mean, _mean_of(policy, adapted[-1], data))
    sampler.close()


def _mean_of(policy: nn.Module, phi: Params, data: TaskData) -> torch.Tensor:
    return torch.func.vmap(lambda p, o: functional_call(policy, p, (o,)))(
        phi, data.post.observations.movedim(1, 0)
    ).mean
