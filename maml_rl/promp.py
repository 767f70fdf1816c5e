"""ProMP's outer step (Rothfuss et al. 2019, arXiv 1810.06784, Alg. 1): several Adam steps per
meta-iteration on a clipped-ratio objective with a KL penalty on the inner steps, instead of
TRPO's one constrained step (`outer: promp`; `maml.meta_step` is TRPO).

With φ_s(x) the adapted parameters after s inner steps (the estimator's inner loss, LVC in
ProMP: `meta_gradient: lvc`), π_old the policies that sampled each batch, r = π_φS(x)(a|s) /
π_old(a|s) on the post-update batch and A its advantages:

    L(x) = (1/N) Σ_n −mean_w min(r A, clip(r, 1 − ε, 1 + ε) A)                (clipped surrogate)
         + η · (1/S) Σ_s (1/N) Σ_n mean_w KL(π_old,s ‖ π_φs(x)) on inner batch s   (inner KL)

minimised by `promp_steps` Adam steps of learning rate `promp_lr` on x = (θ, step sizes).
ProMP's MuJoCo defaults: 5 steps, ε = 0.3, learning rate 1e-3, η = 5e-4 (fixed), inner step
size 0.1, 40 tasks x 20 trajectories, H = 100, 64x64 tanh (its run_scripts/pro-mp_run_mujoco.py).
A step whose loss or parameters are not finite is not applied: x keeps its last finite value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from maml_rl.config import Config
from maml_rl.estimators import inner_objective
from maml_rl.inner import adaptation_path, step_sizes_of
from maml_rl.maml import MetaParams, MetaStepInfo, TaskData, trust_region_kl
from maml_rl.policy import Distribution, detach, forward, log_prob
from maml_rl.returns import masked_mean
from maml_rl.types import Params


def clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_eps: float) -> Tensor:
    """PPO's pessimistic term, elementwise: min(r A, clip(r, 1 − ε, 1 + ε) A)."""
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return torch.minimum(ratio * advantages, clipped * advantages)


def _path(
    policy: nn.Module, layout: MetaParams, x: Tensor, data: TaskData, cfg: Config
) -> list[Params]:
    theta, step_size = layout.unflatten(x)
    steps = step_sizes_of(step_size, cfg.fast_lr, len(data.inner))
    return adaptation_path(
        policy,
        theta,
        data.inner,
        steps,
        cfg.first_order,
        num_tasks=data.post.num_tasks,
        objective=inner_objective(cfg.meta_gradient, cfg.gamma),
    )


def _distributions(policy: nn.Module, path: list[Params], data: TaskData) -> list[Distribution]:
    """The policy of every step on the batch it is scored on: inner batch s under φ_s, the
    post batch under φ_S; each [N, T, K, ...]."""
    batches = [batch for batch, _ in data.inner] + [data.post]
    return [
        forward(policy, params, batch.observations.movedim(1, 0), per_task=True)
        for params, batch in zip(path, batches, strict=True)
    ]


def promp_objective(
    policy: nn.Module,
    layout: MetaParams,
    x: Tensor,
    data: TaskData,
    old: Sequence[Distribution],
    cfg: Config,
) -> tuple[Tensor, Tensor, Tensor]:
    """(L(x), clipped surrogate, mean inner KL) as 0-dim tensors; `old`: the detached policies
    that sampled each inner batch and the post batch (`_distributions` at x0)."""
    dists = _distributions(policy, _path(policy, layout, x, data, cfg), data)
    post = data.post
    actions, weights = post.actions.movedim(1, 0), post.step_weights.movedim(1, 0)
    ratio = torch.exp(log_prob(dists[-1], actions) - log_prob(old[-1], actions))
    advantages = data.post_advantages.movedim(1, 0)
    terms = clipped_surrogate(ratio, advantages, cfg.promp_clip)
    surrogate = -masked_mean(terms, weights, dim=(1, 2)).mean()
    inner_kls = [
        masked_mean(
            trust_region_kl(old_s, new_s, cfg.kl_direction),
            batch.step_weights.movedim(1, 0),
            dim=(1, 2),
        ).mean()
        for (batch, _), old_s, new_s in zip(data.inner, old[:-1], dists[:-1], strict=True)
    ]
    inner_kl = torch.stack(inner_kls).mean() if inner_kls else torch.zeros_like(surrogate)
    return surrogate + cfg.promp_inner_kl * inner_kl, surrogate, inner_kl


def promp_step(
    policy: nn.Module, theta: Params, step_size: Params, data: TaskData, cfg: Config
) -> tuple[Params, Params, MetaStepInfo]:
    """`promp_steps` Adam steps on L(x) from x0 = (theta, step sizes); see the module doc."""
    start = time.perf_counter()
    layout = MetaParams.of(theta, step_size)
    x0 = layout.flatten(theta, step_size).detach()
    with torch.no_grad():
        old = [
            detach(d) for d in _distributions(policy, _path(policy, layout, x0, data, cfg), data)
        ]
    x = x0.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=cfg.promp_lr)
    loss_before, grad_norm, taken = math.nan, 0.0, 0
    last_good = x0.clone()
    for step in range(cfg.promp_steps):
        optimiser.zero_grad()
        loss = promp_objective(policy, layout, x, data, old, cfg)[0]
        if not torch.isfinite(loss):
            break
        (grad,) = torch.autograd.grad(loss, [x])
        x.grad = grad
        if step == 0:
            loss_before = float(loss.detach())
            grad_norm = float(grad.norm())
        if not torch.isfinite(grad).all():
            break
        optimiser.step()
        if not torch.isfinite(x).all():
            break
        last_good, taken = x.detach().clone(), step + 1
    with torch.no_grad():
        loss_after = float(promp_objective(policy, layout, last_good, data, old, cfg)[0])
        post_now = _distributions(policy, _path(policy, layout, last_good, data, cfg), data)[-1]
        weights = data.post.step_weights.movedim(1, 0)
        kl_after = float(
            masked_mean(
                trust_region_kl(old[-1], post_now, cfg.kl_direction), weights, dim=(1, 2)
            ).mean()
        )
    new_theta, new_step_size = layout.unflatten(last_good)
    info = MetaStepInfo(
        surrogate_before=loss_before,
        surrogate_after=loss_after,
        kl_before=0.0,
        kl_after=kl_after,
        line_search_steps=taken,
        accepted=taken > 0,
        step_fraction=1.0 if taken else 0.0,
        grad_norm=grad_norm,
        max_step_length=float((last_good - x0).norm()),
        timings={"promp_s": time.perf_counter() - start},
    )
    return (
        {n: p.clone() for n, p in new_theta.items()},
        {n: p.clone() for n, p in new_step_size.items()},
        info,
    )
