"""Pure math of the TRPO outer step on flat parameter vectors.

The TRPO update (Schulman et al. 2015, "Trust Region Policy Optimization") solves

    minimise  L(x)   subject to   KL(x_old, x) <= δ

by a quadratic model of the KL around ``x_old`` (Hessian / Fisher ``H``) and a linear model of
the loss (gradient ``g``): the search direction is ``d = H⁻¹ g`` (conjugate gradient, using only
Hessian-vector products), the step length is ``β = sqrt(2δ / dᵀHd)`` (OpenAI Spinning Up, "TRPO",
key equations), and a backtracking line search on the true loss and KL makes the step admissible.

Everything here works on flat parameter vectors ``x: Tensor [P]`` and on callables, so it is
independent of the policy network; `flatten`, `unflatten` and `flat_grad` convert between a
sequence of parameter tensors and the flat vector.

Every inner product of the solver is `dot`, whose bits do not depend on torch's thread count,
so that the outer step of a run whose thread count changes with the load (`torch_threads:
null`, threads.py) is the same as on a fixed count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from maml_rl.threads import torch_threads

__all__ = [
    "HVP",
    "LineSearchResult",
    "backtracking_line_search",
    "conjugate_gradient",
    "dot",
    "exact_hvp",
    "finite_difference_hvp",
    "flat_grad",
    "flatten",
    "max_step_length",
    "unflatten",
]

HVP = Callable[[Tensor], Tensor]
"""A Hessian-vector product ``v [P] -> H v [P]``."""


# ---------------------------------------------------------------------------------------------
# Flat-vector helpers
# ---------------------------------------------------------------------------------------------


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector.

    ``flatten([t_1, ..., t_m]) = concat(vec(t_1), ..., vec(t_m))``, shape ``[P]`` with
    ``P = Σ_i numel(t_i)``. Differentiable with respect to every ``t_i``.
    """
    if len(tensors) == 0:
        raise ValueError("flatten needs at least one tensor")
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector ``[P]`` into tensors shaped like ``like`` (inverse of `flatten`).

    Each output is a reshape of a slice of ``flat`` (a view where possible), so gradients flow
    from the outputs back to ``flat``. ``like`` is only used for its shapes.
    """
    if flat.dim() != 1:
        raise ValueError(f"flat must be 1-D, got shape {tuple(flat.shape)}")
    total = sum(t.numel() for t in like)
    if flat.numel() != total:
        raise ValueError(f"flat has {flat.numel()} elements, the shapes of `like` need {total}")
    out: list[Tensor] = []
    offset = 0
    for t in like:
        n = t.numel()
        out.append(flat.narrow(0, offset, n).reshape(t.shape))
        offset += n
    return out


def flat_grad(
    output: Tensor,
    inputs: Sequence[Tensor],
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Tensor:
    """Flat gradient ``∇_inputs output`` as a vector ``[P]`` (``P`` = total numel of inputs).

    ``output`` must be a scalar. Inputs that ``output`` does not depend on get zero gradients.
    With ``create_graph=True`` the result is itself differentiable (for Hessian-vector products).
    """
    grads = torch.autograd.grad(
        output,
        list(inputs),
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return flatten(
        [torch.zeros_like(p) if g is None else g for g, p in zip(grads, inputs, strict=True)]
    )


def dot(a: Tensor, b: Tensor) -> Tensor:
    """aᵀb of two flat vectors ``[P]``, a 0-dim tensor with the same bits on any thread count.

    On the CPU `torch.dot` is MKL's ``sdot`` / ``ddot``, which splits a long sum between its
    threads: on an ant policy (P = 11472) the CG of one meta-step gave different last bits on
    1 and 2 threads, 3e-8 in the new parameters (``MKL_CBWR=AUTO,STRICT``, runtime.py, fixes
    the order for a given thread count only). Here the sum runs on one thread: 8 µs a product
    with the switch of thread count, against 4 µs on one and 17 µs on two busy cores without
    it; 22 products per meta-step, nothing measurable against its seconds (benchmarks/threads.py).
    """
    if a.device.type != "cpu":
        return torch.dot(a, b)
    with torch_threads(1):
        return torch.dot(a, b)


# ---------------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------------


def exact_hvp(grad: Tensor, x: Tensor, damping: float = 0.0) -> HVP:
    """Exact (Pearlmutter) Hessian-vector product from a differentiable gradient.

    ``grad = ∇f(x)``, shape ``[P]``, must have been computed with ``create_graph=True`` so that its
    graph reaches ``x`` (a leaf or any tensor of that graph, shape ``[P]``). The returned function
    computes

        H v + damping · v = ∇_x (∇f(x)ᵀ v) + damping · v,     v: [P] -> [P]

    with one backward pass per call through the graph of ``grad`` (built once, kept with
    ``retain_graph=True``, reused by every call). ``v`` is treated as a constant; the result
    carries no graph. If ``grad`` does not depend on ``x`` (``f`` linear) the Hessian is zero.
    """
    if grad.shape != x.shape or grad.dim() != 1:
        raise ValueError(
            f"grad and x must both be [P], got {tuple(grad.shape)} and {tuple(x.shape)}"
        )

    def hvp(v: Tensor) -> Tensor:
        v = v.detach()
        if grad.requires_grad:
            (hv,) = torch.autograd.grad(torch.dot(grad, v), x, retain_graph=True, allow_unused=True)
        else:
            hv = None
        hv = torch.zeros_like(v) if hv is None else hv.detach()
        return hv + damping * v

    return hvp


def finite_difference_hvp(
    grad_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    damping: float = 0.0,
    eps: float | None = None,
) -> HVP:
    """Hessian-vector product by a symmetric difference of gradients (no second derivatives).

        H v ≈ (∇f(x + h v) − ∇f(x − h v)) / (2h) + damping · v,     v: [P] -> [P]

    as in rllab's ``FiniteDifferenceHvp`` used by the MAML paper's TRPO optimizer.
    ``grad_fn(y)`` returns ``∇f(y)`` with shape ``[P]``; it is called twice per product with a
    fresh tensor ``y`` that carries no graph, with autograd enabled even if the caller is under
    ``torch.no_grad()`` (``grad_fn`` may differentiate internally, e.g. on ``y.requires_grad_()``;
    its result is detached). ``x`` is not modified.

    Step ``h``:

    * ``eps`` given — rllab's rule ``h = eps / (‖x‖ + 1e-8)`` (rllab's default ``eps = 1e-8``).
      It ignores ``‖v‖`` and the dtype: in float32, ``h·v ≈ 1e-8 / ‖x‖`` is far below the spacing
      of the entries of ``x`` (≈ 6e-8·|x_i|), so ``x + h v == x`` and the product collapses to
      ``damping · v`` (or to rounding noise). Note that the MAML reference code builds
      ``FiniteDifferenceHvp(num_slices)``, which passes ``num_slices = 1`` as ``base_eps``, so the
      runs behind the paper effectively used ``eps = 1``, i.e. ``h = 1/‖x‖``.
    * ``eps=None`` (default) — ``h = cbrt(ε_mach) · (1 + ‖x‖) / ‖v‖`` with ``ε_mach`` the machine
      epsilon of ``x.dtype``: the perturbation ``h‖v‖`` balances the O(h²) truncation error of the
      central difference against its O(ε_mach / h) rounding error, relative to the scale of ``x``.
      Works in float32 (relative error ~1e-4) and float64 (~1e-10) alike.

    ``v = 0`` returns ``damping · v`` (zeros) without calling ``grad_fn``.
    """
    if x.dim() != 1:
        raise ValueError(f"x must be [P], got shape {tuple(x.shape)}")
    x0 = x.detach().clone()
    x_norm = float(torch.linalg.vector_norm(x0))
    cbrt_eps = float(torch.finfo(x0.dtype).eps) ** (1.0 / 3.0)

    def hvp(v: Tensor) -> Tensor:
        v = v.detach()
        v_norm = float(torch.linalg.vector_norm(v))
        if v_norm == 0.0 or not math.isfinite(v_norm):
            if v_norm == 0.0:
                return damping * v
            return torch.full_like(v, float("nan"))
        h = eps / (x_norm + 1e-8) if eps is not None else cbrt_eps * (1.0 + x_norm) / v_norm
        with torch.enable_grad():  # grad_fn may differentiate internally even under no_grad
            g_plus = grad_fn(x0 + h * v).detach()
            g_minus = grad_fn(x0 - h * v).detach()
        return (g_plus - g_minus) / (2.0 * h) + damping * v

    return hvp


# ---------------------------------------------------------------------------------------------
# Conjugate gradient and step length
# ---------------------------------------------------------------------------------------------


def conjugate_gradient(hvp: HVP, b: Tensor, iters: int = 10, residual_tol: float = 1e-10) -> Tensor:
    """Approximately solve ``H x = b`` by conjugate gradient from ``x₀ = 0``.

    ``H`` (``[P, P]``, symmetric positive definite) is only available as the product ``hvp``;
    ``b``: ``[P]``; returns ``x``: ``[P]``. Standard CG (Hestenes & Stiefel 1952; Nocedal & Wright,
    Alg. 5.2; the solver of Schulman et al. 2015, App. C):

        r₀ = p₀ = b,  α_k = r_kᵀr_k / p_kᵀHp_k,  x_{k+1} = x_k + α_k p_k,
        r_{k+1} = r_k − α_k H p_k,  p_{k+1} = r_{k+1} + (r_{k+1}ᵀr_{k+1} / r_kᵀr_k) p_k.

    Iterate ``k`` minimises the H-norm of the error over the k-th Krylov space, so that error
    is non-increasing in ``k``. ``hvp`` is called at most ``iters`` times. Stops early once
    ``rᵀr < residual_tol`` (``b = 0`` returns zeros without calling ``hvp``), and stops and returns
    the current ``x`` if ``pᵀHp <= 0`` or is non-finite (H not positive definite along ``p``), so
    it never divides by zero.

    """
    return conjugate_gradient_with_residual(hvp, b, iters, residual_tol)[0]


def conjugate_gradient_with_residual(
    hvp: HVP, b: Tensor, iters: int = 10, residual_tol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """`conjugate_gradient`'s ``x`` and its recursive residual ``r = b − H x`` (exact in exact
    arithmetic), so that ``xᵀHx = xᵀ(b − r)`` needs no further product."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rdotr = dot(r, r)
    for _ in range(iters):
        rr = float(rdotr)
        if not (rr >= residual_tol and rr > 0.0):  # converged, or r = 0, or NaN
            break
        z = hvp(p)
        p_hp = dot(p, z)
        if not (math.isfinite(float(p_hp)) and float(p_hp) > 0.0):
            break
        alpha = rdotr / p_hp
        x = x + alpha * p
        r = r - alpha * z
        new_rdotr = dot(r, r)
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    return x, r


def max_step_length(direction: Tensor, hvp_direction: Tensor, max_kl: float) -> Tensor:
    """Largest step along ``direction`` allowed by the quadratic KL model.

        β = sqrt(2 δ / dᵀHd),   so that  ½ (βd)ᵀ H (βd) = δ = max_kl

    (Schulman et al. 2015 App. C; Spinning Up's TRPO derivation of ``sqrt(2δ / gᵀH⁻¹g)``, where
    ``d = H⁻¹g`` gives ``dᵀHd = gᵀH⁻¹g``). ``direction``: ``[P]``, ``hvp_direction = H d``: ``[P]``.
    Returns a 0-dim tensor (no graph); returns 0 if ``dᵀHd <= 0`` or is non-finite.
    """
    if max_kl < 0:
        raise ValueError(f"max_kl must be >= 0, got {max_kl}")
    d_hd = dot(direction.detach(), hvp_direction.detach())
    if not (math.isfinite(float(d_hd)) and float(d_hd) > 0.0):
        return torch.zeros((), dtype=direction.dtype, device=direction.device)
    beta = torch.sqrt(2.0 * max_kl / d_hd)
    if not math.isfinite(float(beta)):
        return torch.zeros((), dtype=direction.dtype, device=direction.device)
    return beta


# ---------------------------------------------------------------------------------------------
# Backtracking line search
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineSearchResult:
    """Outcome of `backtracking_line_search`."""

    x: Tensor
    """Accepted parameters ``[P]``, or ``x0`` itself (the same object) if rejected."""
    accepted: bool
    steps: int
    """Number of candidates evaluated (1 = the full step was accepted)."""
    loss: float
    """Loss at the returned ``x`` (``loss_before`` if rejected)."""
    kl: float
    """Mean KL at the returned ``x`` (0.0 if rejected)."""
    step_fraction: float
    """``backtrack_ratio**k`` of the accepted candidate, 0.0 if rejected."""


def backtracking_line_search(
    evaluate: Callable[[Tensor], tuple[float, float]],
    x0: Tensor,
    full_step: Tensor,
    loss_before: float,
    max_kl: float,
    max_steps: int = 15,
    backtrack_ratio: float = 0.8,
) -> LineSearchResult:
    """Backtracking line search of TRPO (Schulman et al. 2015, App. C; rllab's optimizer).

    Candidates ``x_k = x0 + backtrack_ratio**k · full_step`` for ``k = 0 .. max_steps-1``
    (``x0``, ``full_step``: ``[P]``; ``full_step = −β d`` already points downhill).
    ``evaluate(x) -> (loss, mean_kl)``. The first candidate with finite loss and KL,
    ``loss < loss_before`` and ``kl <= max_kl`` is accepted. If none is, ``x0`` itself is returned
    with ``accepted=False`` (rllab's "rejecting the step"). At most ``max_steps`` evaluations;
    none if ``full_step`` is non-finite or ``loss_before`` is NaN (nothing could be accepted).
    Candidates are built without autograd history; ``evaluate`` runs in the caller's grad mode
    (not under ``no_grad``), so it may differentiate internally. Inputs are not modified.
    """
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if not 0.0 < backtrack_ratio < 1.0:
        raise ValueError(f"backtrack_ratio must be in (0, 1), got {backtrack_ratio}")
    if x0.shape != full_step.shape:
        raise ValueError(
            f"x0 and full_step shapes differ: {tuple(x0.shape)} vs {tuple(full_step.shape)}"
        )

    rejected = LineSearchResult(
        x=x0, accepted=False, steps=0, loss=float(loss_before), kl=0.0, step_fraction=0.0
    )
    if math.isnan(loss_before) or not bool(torch.isfinite(full_step).all()):
        return rejected

    steps = 0
    for k in range(max_steps):
        fraction = backtrack_ratio**k
        with torch.no_grad():
            candidate = x0 + fraction * full_step
        # evaluate runs outside no_grad: it may need autograd (e.g. MAML's inner adaptation step).
        loss, kl = evaluate(candidate)
        loss, kl = float(loss), float(kl)
        steps += 1
        if math.isfinite(loss) and math.isfinite(kl) and loss < loss_before and kl <= max_kl:
            return LineSearchResult(
                x=candidate, accepted=True, steps=steps, loss=loss, kl=kl, step_fraction=fraction
            )
    return LineSearchResult(
        x=x0, accepted=False, steps=steps, loss=float(loss_before), kl=0.0, step_fraction=0.0
    )
