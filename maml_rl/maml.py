"""One meta-iteration of MAML-TRPO: collect pre/post batches, the meta-objective, the TRPO step.

Meta-parameters x = (theta, learnable step sizes) are flattened into one vector so the TRPO
machinery of `trpo.py` applies unchanged. The meta-objective of N tasks (Finn et al. 2017,
Alg. 3, with TRPO as in their experiments):

    phi_n(x)   = adapt(theta, pre_batches_n)                          (inner.py)
    L(x)       = -(1/N) Σ_n mean_{t,k} exp(log π_{phi_n(x)}(a|s) - log π_old(a|s)) · A_post
    KL(x)      =  (1/N) Σ_n mean_{t,k} KL(π_old(·|s) ‖ π_{phi_n(x)}(·|s))

(mean_{t,k}: weighted by the batch's step weights, `cfg.loss_weighting`; the KL reversed with
`kl_direction: new_old`; the inner loss and an extra outer term are the meta-gradient
estimator's, `cfg.meta_gradient`, see estimators.py.)

minimised subject to KL(x) ≤ max_kl, where π_old is the post-update policy that collected
post_batch. Everything after sampling is a pure function of x and the collected data.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from maml_rl.baseline import advantages as compute_advantages
from maml_rl.config import Config
from maml_rl.curvature import ChunkedGaussNewtonHVP, GaussNewtonHVP
from maml_rl.errors import NonFiniteError
from maml_rl.estimators import emaml_loss, inner_objective
from maml_rl.inner import StepSize, adapt, first_order_gradients, inner_step, step_sizes_of
from maml_rl.policy import Distribution, detach, forward, kl, log_prob
from maml_rl.returns import loss_weights, masked_mean
from maml_rl.sampler import TrajectorySampler
from maml_rl.tasks import Task
from maml_rl.trpo import (
    backtracking_line_search,
    conjugate_gradient_with_residual,
    exact_hvp,
    finite_difference_hvp,
    flat_grad,
    max_step_length,
)
from maml_rl.types import Batch, Params


@dataclass(frozen=True)
class MetaParams:
    """The layout of the flat meta-parameter vector x = [theta..., step sizes...]."""

    theta_names: tuple[str, ...]
    theta_shapes: tuple[torch.Size, ...]
    step_names: tuple[str, ...]
    step_shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, theta: Params, step_size: Params) -> MetaParams:
        return cls(
            tuple(theta),
            tuple(p.shape for p in theta.values()),
            tuple(step_size),
            tuple(p.shape for p in step_size.values()),
        )

    def flatten(self, theta: Params, step_size: Params) -> Tensor:
        parts = [theta[n].reshape(-1) for n in self.theta_names]
        parts += [step_size[n].reshape(-1) for n in self.step_names]
        return torch.cat(parts)

    def unflatten(self, x: Tensor) -> tuple[Params, Params]:
        """Differentiable views of x as (theta, step sizes)."""
        out: list[Params] = [{}, {}]
        offset = 0
        for group, names, shapes in (
            (0, self.theta_names, self.theta_shapes),
            (1, self.step_names, self.step_shapes),
        ):
            for name, shape in zip(names, shapes, strict=True):
                size = math.prod(shape)
                out[group][name] = x[offset : offset + size].view(shape)
                offset += size
        return out[0], out[1]


@dataclass(frozen=True)
class TaskData:
    """Everything collected for N tasks in one meta-iteration.

    inner: per inner step, (batch [T, N, K, ...], advantages [T, N, K]); step 0 sampled with
    theta, step i with the parameters after i inner steps. post: the batch sampled with the
    adapted parameters phi, with its advantages.
    """

    inner: tuple[tuple[Batch, Tensor], ...]
    post: Batch
    post_advantages: Tensor


def batch_advantages(batch: Batch, cfg: Config) -> Tensor:
    """Advantages of a batch: discounted returns, per-task linear baseline, GAE, normalisation
    (its statistics weighted by `cfg.advantage_statistics`, divided by `cfg.advantage_scale`)."""
    return compute_advantages(
        batch.observations,
        batch.rewards,
        batch.mask,
        cfg.gamma,
        cfg.gae_lambda,
        normalize=cfg.normalize_advantages,
        statistics_weights=loss_weights(batch.mask, cfg.advantage_statistics),
        scale=cfg.advantage_scale,
    )


def weighted(batch: Batch, cfg: Config) -> Batch:
    """The batch with the step weights of `cfg.loss_weighting` (returns.loss_weights)."""
    if cfg.loss_weighting == "steps":
        return batch.with_weights(None)
    return batch.with_weights(loss_weights(batch.mask, cfg.loss_weighting))


def trust_region_kl(old: Distribution, new: Distribution, direction: str) -> Tensor:
    """Per-sample KL of the trust region [*]: KL(old ‖ new) (old_new) or KL(new ‖ old)."""
    return kl(old, new) if direction == "old_new" else kl(new, old)


def check_finite(batch: Batch, tasks: Sequence[Task], phase: str) -> None:
    """Raise NonFiniteError naming the first task and time step whose observation or reward
    is NaN or infinite; steps after an episode ended (mask 0) are ignored."""
    valid = batch.mask > 0
    bad = valid & ~(torch.isfinite(batch.rewards) & torch.isfinite(batch.observations).all(-1))
    if bool(bad.any()):
        t, n, k = (int(i) for i in bad.nonzero()[0])
        what = "reward" if not torch.isfinite(batch.rewards[t, n, k]) else "observation"
        raise NonFiniteError(
            f"non-finite {what} from task {n} ({tasks[n]}), trajectory {k}, step {t} "
            f"while sampling {phase}"
        )


def collect(
    sampler: TrajectorySampler,
    theta: Params,
    tasks: Sequence[Task],
    step_sizes: Sequence[StepSize],
    seeds: Sequence[int],
    cfg: Config,
) -> tuple[TaskData, list[Params]]:
    """Sample and adapt: len(step_sizes) inner steps (0 for plain TRPO), then the post batch.

    seeds: one per sampling phase (len(step_sizes) + 1). Returns the data and the adapted
    parameters after each step (detached), [phi_1, ..., phi_S], each [N, *shape].
    """
    policy = sampler.policy
    objective = inner_objective(cfg.meta_gradient, cfg.gamma)  # the same as meta_objective's
    params: Params = theta
    inner: list[tuple[Batch, Tensor]] = []
    adapted: list[Params] = []
    for step, step_size in enumerate(step_sizes):
        batch = sampler.sample(params, tasks, seed=seeds[step], per_task=step > 0)
        check_finite(batch, tasks, f"inner step {step}")
        batch = weighted(batch, cfg)
        advantages = batch_advantages(batch, cfg)
        inner.append((batch, advantages))
        if step == 0:
            params = {n: p.detach().expand(len(tasks), *p.shape) for n, p in theta.items()}
        params = inner_step(policy, params, batch, advantages, step_size, False, objective)
        params = {n: p.detach() for n, p in params.items()}
        adapted.append(params)
    post = sampler.sample(params, tasks, seed=seeds[len(step_sizes)], per_task=bool(step_sizes))
    check_finite(post, tasks, "post-update")
    post = weighted(post, cfg)
    return TaskData(tuple(inner), post, batch_advantages(post, cfg)), adapted


def _post_distribution(
    policy: nn.Module,
    layout: MetaParams,
    x: Tensor,
    data: TaskData,
    cfg: Config,
    frozen_grads: Sequence[Params] | None = None,
) -> Distribution:
    theta, step_size = layout.unflatten(x)
    steps = step_sizes_of(step_size, cfg.fast_lr, len(data.inner))
    phi = adapt(
        policy,
        theta,
        data.inner,
        steps,
        cfg.first_order,
        frozen_grads=frozen_grads,
        num_tasks=data.post.num_tasks,
        objective=inner_objective(cfg.meta_gradient, cfg.gamma),
    )
    return forward(policy, phi, data.post.observations.movedim(1, 0), per_task=True)


def meta_objective(
    policy: nn.Module,
    layout: MetaParams,
    x: Tensor,
    data: TaskData,
    old_dist: Distribution,
    cfg: Config,
    frozen_grads: Sequence[Params] | None = None,
) -> tuple[Tensor, Tensor]:
    """(surrogate loss L(x), mean KL(x)) as 0-dim tensors; see the module docstring.

    frozen_grads: first-order inner gradients held fixed (see `inner.adapt`).
    """
    dist = _post_distribution(policy, layout, x, data, cfg, frozen_grads)
    return _objective_terms(policy, layout, x, data, dist, old_dist, cfg)


def _objective_terms(
    policy: nn.Module,
    layout: MetaParams,
    x: Tensor,
    data: TaskData,
    dist: Distribution,
    old_dist: Distribution,
    cfg: Config,
) -> tuple[Tensor, Tensor]:
    """`meta_objective` given the post-update distribution `dist` [N, T, K, A] at x."""
    post = data.post
    actions, weights = post.actions.movedim(1, 0), post.step_weights.movedim(1, 0)
    ratio = torch.exp(log_prob(dist, actions) - log_prob(old_dist, actions))
    advantages = data.post_advantages.movedim(1, 0)
    loss = -masked_mean(ratio * advantages, weights, dim=(1, 2)).mean()
    if cfg.meta_gradient == "emaml" and data.inner:  # the score of θ's own trajectories
        loss = loss + emaml_loss(policy, layout.unflatten(x)[0], data.inner[0][0], post)
    divergence = trust_region_kl(old_dist, dist, cfg.kl_direction)
    mean_kl = masked_mean(divergence, weights, dim=(1, 2)).mean()
    return loss, mean_kl


@dataclass(frozen=True)
class MetaStepInfo:
    """Diagnostics of one TRPO meta-step (logged as `meta/<name>`, timings as `time/<name>`)."""

    surrogate_before: float
    surrogate_after: float
    kl_before: float
    kl_after: float
    line_search_steps: int
    accepted: bool
    step_fraction: float
    grad_norm: float
    max_step_length: float
    timings: dict[str, float] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, float]:
        metrics = {f"meta/{k}": float(v) for k, v in self.__dict__.items() if k != "timings"}
        return metrics | {f"time/{k}": v for k, v in self.timings.items()}


def first_tasks(data: TaskData, dist: Distribution, count: int) -> tuple[TaskData, Distribution]:
    """The data of the first `count` tasks (tasks are i.i.d., so this is a random subset)."""
    if count >= data.post.num_tasks:
        return data, dist

    inner = tuple((b.first_tasks(count), a[:, :count]) for b, a in data.inner)
    subset = TaskData(inner, data.post.first_tasks(count), data.post_advantages[:, :count])
    return subset, type(dist)(*(t[:count] for t in dist))


def meta_step(
    policy: nn.Module, theta: Params, step_size: Params, data: TaskData, cfg: Config
) -> tuple[Params, Params, MetaStepInfo]:
    """One TRPO step on the meta-objective; returns new (theta, step sizes) and diagnostics.

    g = ∇L(x); d = CG(H + damping I, g); β = sqrt(2 max_kl / dᵀHd); backtrack on x - β d.
    H is the Hessian of KL(x) at x, by finite differences of ∇KL, by double backward, or in its
    Gauss-Newton form (exact at x, curvature.py), on the first ceil(hvp_subsample · N) tasks.
    If the line search finds no admissible step, theta and step sizes are returned unchanged.
    """
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    layout = MetaParams.of(theta, step_size)
    x0 = layout.flatten(theta, step_size).detach()
    # First order: gradient and curvature of the linear model phi = theta - alpha g (g fixed);
    # the line search below evaluates the true adaptation.
    frozen = None
    if cfg.first_order:
        theta0, steps0 = layout.unflatten(x0)
        frozen = first_order_gradients(
            policy,
            theta0,
            data.inner,
            step_sizes_of(steps0, cfg.fast_lr, len(data.inner)),
            inner_objective(cfg.meta_gradient, cfg.gamma),
        )
    curvature = None
    if cfg.hvp == "gauss_newton":  # adapts once and gives π_old on the post batch with it
        curvature = _gauss_newton(policy, layout, x0, data, None, cfg, frozen)
        old_dist = curvature.old_dist
    else:
        with torch.no_grad():
            old_dist = detach(_post_distribution(policy, layout, x0, data, cfg))
    lap("adaptation_s")

    num_hvp_tasks = max(1, math.ceil(cfg.hvp_subsample * data.post.num_tasks))
    hvp_data, hvp_old = first_tasks(data, old_dist, num_hvp_tasks)
    hvp_frozen = None if frozen is None else [{n: g[:num_hvp_tasks] for n, g in f.items()}
                                              for f in frozen]  # fmt: skip
    if curvature is not None:
        # --- meta-gradient by the adjoint recursion of the Gauss-Newton products ---
        with torch.no_grad():  # at x0 the ratio is 1 and the KL 0: no second forward pass
            loss, kl_before = _objective_terms(policy, layout, x0, data, old_dist, old_dist, cfg)
        loss_before = loss.item()
        grad = _gauss_newton_gradient(curvature, policy, layout, x0, data, cfg)
        lap("meta_gradient_s")
        if num_hvp_tasks < data.post.num_tasks:
            curvature = _gauss_newton(policy, layout, x0, hvp_data, hvp_old, cfg, hvp_frozen)
        hvp = _damped(curvature, layout, cfg)
    else:
        # --- meta-gradient through the adaptation by autograd ---
        x = x0.clone().requires_grad_(True)
        loss, kl_before = meta_objective(policy, layout, x, data, old_dist, cfg, frozen)
        loss_before = loss.item()
        reuse_graph = cfg.hvp == "exact" and num_hvp_tasks == data.post.num_tasks
        grad = flat_grad(loss, [x], retain_graph=reuse_graph)
        lap("meta_gradient_s")

        def hvp_kl(y: Tensor) -> Tensor:
            return meta_objective(policy, layout, y, hvp_data, hvp_old, cfg, hvp_frozen)[1]

        hvp = _make_hvp(hvp_kl, x, kl_before if reuse_graph else None, cfg)

    # --- conjugate gradient on the KL curvature (possibly on a subset of tasks) ---
    # dᵀ(H + damping)d = dᵀ(g - r) from CG's own residual r: no extra product
    direction, residual = conjugate_gradient_with_residual(hvp, grad, iters=cfg.cg_iters)
    beta = max_step_length(direction, grad - residual, cfg.max_kl)
    lap("cg_s")

    # --- backtracking line search on the true adaptation ---
    def evaluate(candidate: Tensor) -> tuple[float, float]:
        with torch.no_grad():
            loss_c, kl_c = meta_objective(policy, layout, candidate, data, old_dist, cfg)
        return float(loss_c), float(kl_c)

    result = backtracking_line_search(
        evaluate,
        x0,
        -beta * direction,
        loss_before,
        cfg.max_kl,
        max_steps=cfg.ls_max_steps,
        backtrack_ratio=cfg.ls_backtrack_ratio,
    )
    new_theta, new_step_size = layout.unflatten(result.x.detach())
    lap("line_search_s")
    info = MetaStepInfo(
        surrogate_before=loss_before,
        surrogate_after=result.loss,
        kl_before=kl_before.item(),
        kl_after=result.kl,
        line_search_steps=result.steps,
        accepted=result.accepted,
        step_fraction=result.step_fraction,
        grad_norm=float(grad.norm()),
        max_step_length=float(beta),
        timings=timings,
    )
    return (
        {n: p.clone() for n, p in new_theta.items()},
        {n: p.clone() for n, p in new_step_size.items()},
        info,
    )


def _make_hvp(
    kl_fn: Callable[[Tensor], Tensor], x: Tensor, kl_at_x: Tensor | None, cfg: Config
) -> Callable[[Tensor], Tensor]:
    """Damped Hessian-vector products of kl_fn at x, by the configured method.

    kl_at_x: kl_fn(x) with its graph, if already computed (the exact mode reuses it).
    """
    if cfg.hvp == "exact":
        if kl_at_x is None:
            kl_at_x = kl_fn(x)
        kl_grad = flat_grad(kl_at_x, [x], create_graph=True)
        return exact_hvp(kl_grad, x, damping=cfg.cg_damping)

    def kl_gradient(y: Tensor) -> Tensor:
        y = y.detach().requires_grad_(True)
        return flat_grad(kl_fn(y), [y])

    return finite_difference_hvp(
        kl_gradient, x.detach(), damping=cfg.cg_damping, eps=cfg.hvp_fd_eps
    )


def _gauss_newton(
    policy: nn.Module,
    layout: MetaParams,
    x0: Tensor,
    data: TaskData,
    old_dist: Distribution | None,
    cfg: Config,
    frozen_grads: Sequence[Params] | None,
) -> ChunkedGaussNewtonHVP:
    """The meta-KL's Gauss-Newton products and the meta-gradient at x0 (curvature.py)."""
    theta, step_size = layout.unflatten(x0)
    steps = step_sizes_of(step_size, cfg.fast_lr, len(data.inner))
    objective = inner_objective(cfg.meta_gradient, cfg.gamma)
    build = functools.partial(GaussNewtonHVP, policy, theta, steps, objective=objective)
    return ChunkedGaussNewtonHVP(build, data.inner, data.post, old_dist, frozen_grads)


def _damped(
    product: ChunkedGaussNewtonHVP | GaussNewtonHVP, layout: MetaParams, cfg: Config
) -> Callable[[Tensor], Tensor]:
    """v -> (H + damping I) v on the flat meta-parameter vector."""

    def hvp(v: Tensor) -> Tensor:
        with torch.no_grad():
            v_theta, v_step = layout.unflatten(v.detach())
        h_theta, h_step = product(v_theta, v_step)
        return layout.flatten(h_theta, h_step).detach() + cfg.cg_damping * v

    return hvp


def _gauss_newton_gradient(
    curvature: ChunkedGaussNewtonHVP | GaussNewtonHVP,
    policy: nn.Module,
    layout: MetaParams,
    x0: Tensor,
    data: TaskData,
    cfg: Config,
) -> Tensor:
    """∇L(x0) = (1/N) Σ_n J_nᵀ ∇L_n(phi_n) (+ E-MAML's score term by autograd), flat [P]."""
    step_size = layout.unflatten(x0)[1]
    g_theta, g_step = curvature.meta_gradient(data.post_advantages, step_size)
    grad = layout.flatten(g_theta, g_step).detach()
    if cfg.meta_gradient == "emaml" and data.inner:
        x = x0.clone().requires_grad_(True)
        extra = emaml_loss(policy, layout.unflatten(x)[0], data.inner[0][0], data.post)
        grad = grad + flat_grad(extra, [x])
    return grad


def draw_seeds(rng: np.random.Generator, count: int) -> list[int]:
    """`count` sampling seeds from the environment stream."""
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=count)]
