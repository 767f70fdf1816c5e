"""The meta-KL Hessian at the current meta-parameters in Gauss-Newton form (``hvp: gauss_newton``).

With x = (theta, step sizes alpha), the adaptation of task n in S inner steps

    phi_{n,0}   = theta
    phi_{n,s+1} = phi_{n,s} - alpha ⊙ g_{n,s},    g_{n,s} = ∇L_{n,s}(phi_{n,s})   (inner.py)

and the meta-KL  KL(x) = (1/N) Σ_n KL_n(phi_{n,S}(x)),  KL_n(phi) = mean_{t,k} KL(π_old ‖ π_phi),
the chain rule gives

    ∇²KL(x) = (1/N) Σ_n J_nᵀ F_n J_n  +  (1/N) Σ_n Σ_i ∂KL_n/∂phi_i · ∇²phi_{n,i}(x)

with J_n = ∂phi_{n,S}/∂x and F_n = ∇²_phi KL_n. At the point x0 where π_old was collected,
∂KL_n/∂phi = 0 (KL(p ‖ q) is minimal at q = p), so the second sum vanishes and

    H v = (1/N) Σ_n J_nᵀ F_n J_n v       exactly, at x0.

KL(π ‖ π_old) has the same Hessian at π = π_old (the Fisher), so this is also the curvature of
``kl_direction: new_old``. The means over steps use the post batch's step weights.

J_n is applied without ever forming it. Forward (tangent t_s = ∂phi_s/∂x · v):

    t_0 = v_theta,   t_{s+1} = t_s - alpha ⊙ (H_{n,s} t_s) - v_alpha ⊙ g_{n,s}

and backward (adjoint w_s, with H_{n,s} = ∇²L_{n,s}(phi_{n,s}) symmetric):

    w_S = F_n t_S / N,   w_s = w_{s+1} - H_{n,s} (alpha ⊙ w_{s+1}),
    (H v)_theta = Σ_n w_{n,0},   (H v)_alpha = -Σ_n Σ_s g_{n,s} ⊙ w_{n,s+1}  (to alpha's shape)

With one learnable scalar per step (alpha_s for step s), v_alpha ⊙ g_{n,s} uses v_{alpha_s} and
(H v)_{alpha_s} = -Σ_n g_{n,s} · w_{n,s+1} (that step's term only).

First-order MAML differentiates phi = theta - Σ_s alpha ⊙ g_s with g_s held fixed (inner.py),
so there H_{n,s} = 0. The same adjoint recursion, started from w_S = ∇L_n(phi_n) / N instead of
F_n t_S / N, gives the meta-gradient of the post-update surrogate (``meta_gradient``).

The products H_{n,s} t and F_n t are computed, for Gaussian MLP policies and the REINFORCE inner
loss, in closed form from activations cached once per meta-step (mlp_derivatives.py: a tangent
pass and its adjoint, a few batched matrix products each); otherwise (custom policies,
categorical policies, other activations, the LVC and DiCE inner losses) F_n t by a forward-mode
Jacobian product, the distributions' Fisher in closed form and a reverse pass through a graph
built once (fisher.py; about as fast per product as double backward on navigation's
64x64 policy, 0.9-1.2x by CPU and threads, benchmarks/custom_policy.py), and
H_{n,s} t by double backward through the inner-loss gradient at phi_s, built once per
meta-step (F_n t too where an operation has no forward-mode derivative).
Either way every CG iteration reuses them, instead of differentiating the whole adaptation twice
(``exact``) or recomputing it twice per product (``finite_difference``). Tensors are per task,
[N, *shape].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from maml_rl.fisher import ForwardModeFisher, forward_mode_works
from maml_rl.inner import (
    SCALAR_STEP_SIZE,
    InnerObjective,
    StepSize,
    alpha_of,
    apply_step,
    is_per_step,
    reinforce_loss,
    step_key,
    step_of,
)
from maml_rl.mlp_derivatives import GaussianFisher, ReinforceCurvature, supported, supports
from maml_rl.policy import Distribution, detach, forward, kl, log_prob
from maml_rl.returns import masked_mean
from maml_rl.types import Batch, Params


class _SecondOrder:
    """∇f at leaf params p [N, *shape] with its graph; products H_n t_n = ∇²f_n(p_n) t_n."""

    def __init__(self, params: Params, losses: Tensor) -> None:
        self.params = params
        self.names = list(params)
        grads = torch.autograd.grad(
            losses.sum(), [params[n] for n in self.names], create_graph=True
        )
        self.grads = dict(zip(self.names, grads, strict=True))

    def product(self, t: Params) -> Params:
        """Per-task Hessian products [N, *shape] (f = Σ_n f_n, f_n depends on p_n only)."""
        out = torch.autograd.grad(
            [self.grads[n] for n in self.names],
            [self.params[n] for n in self.names],
            grad_outputs=[t[n] for n in self.names],
            retain_graph=True,
        )
        return dict(zip(self.names, out, strict=True))


def _leaf(params: Params) -> Params:
    return {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}


def _scale(alpha: StepSize, t: Params) -> Params:
    return {n: alpha_of(alpha, n) * v for n, v in t.items()}


def _axpy(y: Params, a: float, x: Params) -> Params:
    return {n: y[n] + a * x[n] for n in y}


def _rows(x: Tensor) -> Tensor:
    """[N, T, K, ...] -> [N, T·K, ...] (a task's samples as rows)."""
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _per_task(batch: Batch, advantages: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(observations [N, M, D], actions [N, M, A], advantages [N, M], step weights [N, M])."""
    return (
        _rows(batch.observations.movedim(1, 0)),
        _rows(batch.actions.movedim(1, 0)),
        _rows(advantages.detach().movedim(1, 0)),
        _rows(batch.step_weights.movedim(1, 0)),
    )


class _AutogradSurrogate:
    """∇ of the per-task post-update surrogates -mean_i ratio_i A_i at phi (autograd)."""

    def __init__(self, policy: nn.Module, phi: Params, post: Batch, old_dist: Distribution) -> None:
        self.policy, self.phi, self.post, self.old_dist = policy, phi, post, old_dist

    def gradient(self, advantages: Tensor) -> Params:
        leaf = _leaf(self.phi)
        with torch.enable_grad():
            obs = self.post.observations.movedim(1, 0)
            dist = forward(self.policy, leaf, obs, per_task=True)
            actions = self.post.actions.movedim(1, 0)
            ratio = torch.exp(log_prob(dist, actions) - log_prob(self.old_dist, actions))
            weights = self.post.step_weights.movedim(1, 0)
            losses = -masked_mean(ratio * advantages.movedim(1, 0), weights, dim=(1, 2))
            grads = torch.autograd.grad(losses.sum(), list(leaf.values()))
        return dict(zip(leaf, grads, strict=True))


class GaussNewtonHVP:
    """H v = (1/N) Σ_n J_nᵀ F_n J_n v of the meta-KL at x0 (see the module docstring), and the
    meta-gradient (1/N) Σ_n J_nᵀ ∇L_n(phi_n) by the same adjoint recursion.

    theta: [*shape] at x0; step_sizes: the S step sizes at x0 (floats or learnable dicts, all
    treated as constants); inner_data: per step (batch [T, N, K, ...], advantages [T, N, K]);
    post: the post-update batch; old_dist: the post-update policy at x0 on post [N, T, K, A]
    (None: computed here from the adapted parameters, `self.old_dist`, with no second
    adaptation);
    frozen_grads: the first-order inner gradients (first-order MAML), else None; objective:
    the inner loss whose Hessians H_{n,s} are used (default `reinforce_loss`).
    closed_form: use mlp_derivatives' products (the default where it `supports` the policy and
    the inner loss is REINFORCE's), else autograd's double backward; both are exact.
    """

    def __init__(
        self,
        policy: nn.Module,
        theta: Params,
        step_sizes: Sequence[StepSize],
        inner_data: Sequence[tuple[Batch, Tensor]],
        post: Batch,
        old_dist: Distribution | None,
        frozen_grads: Sequence[Params] | None,
        objective: InnerObjective | None = None,
        closed_form: bool | None = None,
    ) -> None:
        self.num_tasks = post.num_tasks
        inner_loss = objective or reinforce_loss
        if closed_form is None:
            closed_form = inner_loss is reinforce_loss and supports(policy)
        self.closed_form = closed_form
        mlp = supported(policy) if closed_form else None
        self.step_sizes = [
            {n: a.detach() for n, a in s.items()} if isinstance(s, dict) else s for s in step_sizes
        ]
        phi = {n: p.detach().expand(self.num_tasks, *p.shape) for n, p in theta.items()}
        self.inner: list[_SecondOrder | ReinforceCurvature | None] = []
        self.inner_grads: list[Params] = []
        with torch.enable_grad():
            for s, (batch, advantages) in enumerate(inner_data):
                if frozen_grads is not None:
                    self.inner.append(None)
                    self.inner_grads.append({n: g.detach() for n, g in frozen_grads[s].items()})
                elif mlp is not None:
                    closed = ReinforceCurvature(mlp, phi, *_per_task(batch, advantages))
                    self.inner.append(closed)
                    self.inner_grads.append(closed.grads)
                else:
                    leaf = _leaf(phi)
                    second = _SecondOrder(leaf, inner_loss(policy, leaf, batch, advantages))
                    self.inner.append(second)
                    self.inner_grads.append({n: g.detach() for n, g in second.grads.items()})
                phi = apply_step(phi, self.inner_grads[-1], self.step_sizes[s])
            self.phi = phi
            self.post = post
            if old_dist is None:
                with torch.no_grad():
                    obs = post.observations.movedim(1, 0)
                    old_dist = detach(forward(policy, phi, obs, per_task=True))
            self.old_dist = old_dist
            if mlp is not None:
                obs, _, _, weights = _per_task(post, torch.zeros_like(post.rewards))
                self.fisher: _SecondOrder | GaussianFisher | ForwardModeFisher = GaussianFisher(
                    mlp, phi, obs, weights
                )
                self.surrogate: GaussianFisher | _AutogradSurrogate = self.fisher
            else:
                obs, _, _, weights = _per_task(post, torch.zeros_like(post.rewards))
                if forward_mode_works(policy, phi, obs):
                    self.fisher = ForwardModeFisher(policy, phi, obs, weights)
                else:  # an operation without a forward-mode derivative: double backward
                    leaf = _leaf(phi)
                    dist = forward(policy, leaf, post.observations.movedim(1, 0), per_task=True)
                    weights = post.step_weights.movedim(1, 0)
                    kl_n = masked_mean(kl(old_dist, dist), weights, (1, 2))
                    self.fisher = _SecondOrder(leaf, kl_n)
                self.surrogate = _AutogradSurrogate(policy, phi, post, old_dist)

    def __call__(self, v_theta: Params, v_step: Params) -> tuple[Params, Params]:
        """(H v)_theta [*shape] and (H v)_alpha (step-size shapes) for v = (v_theta, v_step)."""
        n = self.num_tasks
        t = {k: v.expand(n, *v.shape) for k, v in v_theta.items()}
        for s, second in enumerate(self.inner):
            alpha, g = self.step_sizes[s], self.inner_grads[s]
            if second is not None:
                t = _axpy(t, -1.0, _scale(alpha, second.product(t)))
            if v_step:
                t = _axpy(t, -1.0, _scale(step_of(v_step, s), g))
        w = {k: u / n for k, u in self.fisher.product(t).items()}
        return self._adjoint(w, v_step)

    def meta_gradient(self, post_advantages: Tensor, step_shapes: Params) -> tuple[Params, Params]:
        """∇L(x0) of the mean post-update surrogate (maml.meta_objective's loss) through the
        adaptation: (theta part [*shape], step-size part shaped like `step_shapes`)."""
        if isinstance(self.surrogate, GaussianFisher):
            _, actions, advantages, _ = _per_task(self.post, post_advantages)
            grads = self.surrogate.surrogate_gradient(actions, advantages)
        else:
            grads = self.surrogate.gradient(post_advantages.detach())
        w = {k: u / self.num_tasks for k, u in grads.items()}
        return self._adjoint(w, step_shapes)

    def _adjoint(self, w: Params, v_step: Params) -> tuple[Params, Params]:
        """w_S = w; w_s = w_{s+1} - H_s (alpha ⊙ w_{s+1}); theta part Σ_n w_0, alpha part
        -Σ_n Σ_s g_s ⊙ w_{s+1} (shaped like v_step)."""
        out_step = {k: torch.zeros_like(v) for k, v in v_step.items()}
        per_step = is_per_step(v_step)
        for s in reversed(range(len(self.inner))):
            alpha, g, second = self.step_sizes[s], self.inner_grads[s], self.inner[s]
            for k in out_step:
                if k == SCALAR_STEP_SIZE or (per_step and k == step_key(s)):
                    out_step[k] = out_step[k] - sum((g[m] * w[m]).sum() for m in w)
                elif not per_step:
                    out_step[k] = out_step[k] - (g[k] * w[k]).sum(0)
            if second is not None:
                w = _axpy(w, -1.0, second.product(_scale(alpha, w)))
        return {k: u.sum(0) for k, u in w.items()}, out_step


ROWS_PER_CHUNK = 20_000
"""Samples (tasks × T × K) per chunk of `ChunkedGaussNewtonHVP`."""


class ChunkedGaussNewtonHVP:
    """`GaussNewtonHVP` built and applied over consecutive chunks of tasks, and summed.

    Products, meta-gradients and π_old are those of one `GaussNewtonHVP` over all N tasks up
    to rounding: each is a mean over tasks of per-task terms, so with chunk c of n_c tasks,
    H v = Σ_c (n_c / N) H_c v. A chunk's temporaries ([n_c, M, hidden] per layer) stay in the
    cache between the batched products of one CG product: 15–20 % faster products on
    half-cheetah velocity's 40 tasks × 2,000 samples in chunks of 10 tasks (2 threads).

    build(inner_data, post, old_dist, frozen_grads): a `GaussNewtonHVP` of the tasks of these
    (e.g. ``functools.partial(GaussNewtonHVP, policy, theta, step_sizes)``), called with each
    chunk's slice of the arguments that follow (shapes as for `GaussNewtonHVP`).
    tasks_per_chunk: None: about `ROWS_PER_CHUNK` samples per chunk.
    """

    def __init__(
        self,
        build: Callable[..., GaussNewtonHVP],
        inner_data: Sequence[tuple[Batch, Tensor]],
        post: Batch,
        old_dist: Distribution | None,
        frozen_grads: Sequence[Params] | None,
        tasks_per_chunk: int | None = None,
    ) -> None:
        self.num_tasks = num_tasks = post.num_tasks
        rows = post.rewards.shape[0] * post.rewards.shape[2]  # T·K samples per task
        size = tasks_per_chunk or max(1, ROWS_PER_CHUNK // max(1, rows))
        self.bounds = [(a, min(num_tasks, a + size)) for a in range(0, num_tasks, size)]
        self.parts = [
            build(
                [(batch.task_slice(a, b), adv[:, a:b]) for batch, adv in inner_data],
                post.task_slice(a, b),
                None if old_dist is None else type(old_dist)(*(t[a:b] for t in old_dist)),
                None
                if frozen_grads is None
                else [{n: g[a:b] for n, g in grads.items()} for grads in frozen_grads],
            )
            for a, b in self.bounds
        ]
        self.closed_form = self.parts[0].closed_form
        dists = [part.old_dist for part in self.parts]
        self.old_dist: Distribution = type(dists[0])(
            *(torch.cat(fields) for fields in zip(*dists, strict=True))
        )

    def _mean(self, outs: Sequence[tuple[Params, Params]]) -> tuple[Params, Params]:
        """Σ_c (n_c / N) out_c of per-chunk means over tasks, for both parts of the output."""
        weights = [(b - a) / self.num_tasks for a, b in self.bounds]

        def mean(i: int) -> Params:
            pairs = list(zip(weights, outs, strict=True))  # sum from 0: a sum of tensors
            return {k: cast(Tensor, sum(w * out[i][k] for w, out in pairs)) for k in outs[0][i]}

        return mean(0), mean(1)

    def __call__(self, v_theta: Params, v_step: Params) -> tuple[Params, Params]:
        """(H v)_theta and (H v)_alpha, as `GaussNewtonHVP.__call__`."""
        if len(self.parts) == 1:
            return self.parts[0](v_theta, v_step)
        return self._mean([part(v_theta, v_step) for part in self.parts])

    def meta_gradient(self, post_advantages: Tensor, step_shapes: Params) -> tuple[Params, Params]:
        """∇L(x0), as `GaussNewtonHVP.meta_gradient`; post_advantages [T, N, K]."""
        return self._mean(
            [
                part.meta_gradient(post_advantages[:, a:b], step_shapes)
                for part, (a, b) in zip(self.parts, self.bounds, strict=True)
            ]
        )
