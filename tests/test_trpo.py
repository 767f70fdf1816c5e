"""Tests of the pure TRPO math in `maml_rl.trpo` (float64 unless a test is about float32)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from maml_rl.trpo import (
    LineSearchResult,
    backtracking_line_search,
    conjugate_gradient,
    conjugate_gradient_with_residual,
    exact_hvp,
    finite_difference_hvp,
    flat_grad,
    flatten,
    max_step_length,
    unflatten,
)

DTYPE = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, dtype: torch.dtype = DTYPE) -> Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=DTYPE).to(dtype)


def _spd(n: int, seed: int) -> Tensor:
    m = _randn(n, n, seed=seed)
    return m.T @ m + n * torch.eye(n, dtype=DTYPE)


def _rel(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


class _Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        return self.fn(v)


# ---------------------------------------------------------------------------------------------
# Conjugate gradient
# ---------------------------------------------------------------------------------------------


def test_cg_solves_spd_system() -> None:
    n = 20
    a = _spd(n, seed=0)
    b = _randn(n, seed=1)
    b_before = b.clone()
    x = conjugate_gradient(lambda v: a @ v, b, iters=n, residual_tol=1e-30)
    expected = torch.linalg.solve(a, b)
    assert x.dtype == DTYPE and x.shape == (n,)
    assert torch.allclose(x, expected, rtol=0.0, atol=1e-8)
    assert torch.equal(b, b_before)


@pytest.mark.parametrize("iters", [1, 3, 10])
def test_cg_residual_gives_the_step_curvature_without_a_product(iters: int) -> None:
    """xᵀ(b - r) equals xᵀAx for the iterate x after any number of steps (the meta-step's
    step length uses it instead of one more product)."""
    n = 20
    a = _spd(n, seed=2)
    b = _randn(n, seed=3)
    counted = _Counter(lambda v: a @ v)
    x, r = conjugate_gradient_with_residual(counted, b, iters=iters, residual_tol=1e-30)
    assert counted.calls == iters
    torch.testing.assert_close(r, b - a @ x, rtol=0.0, atol=1e-10)
    assert float(x @ (b - r)) == pytest.approx(float(x @ a @ x), rel=1e-12)
    torch.testing.assert_close(x, conjugate_gradient(lambda v: a @ v, b, iters, 1e-30))


def test_cg_zero_rhs_gives_exact_zeros_without_hvp_calls() -> None:
    hvp = _Counter(lambda v: _spd(5, seed=2) @ v)
    x = conjugate_gradient(hvp, torch.zeros(5, dtype=DTYPE), iters=10)
    assert torch.equal(x, torch.zeros(5, dtype=DTYPE))
    assert not torch.isnan(x).any()
    assert hvp.calls == 0


def test_cg_error_a_norm_is_monotone_in_iterations() -> None:
    n = 20
    a = _spd(n, seed=3)
    b = _randn(n, seed=4)
    x_star = torch.linalg.solve(a, b)

    def a_norm_error(k: int) -> float:
        e = conjugate_gradient(lambda v: a @ v, b, iters=k, residual_tol=1e-30) - x_star
        return float(e @ a @ e)

    errors = [a_norm_error(k) for k in range(n + 1)]
    assert errors[0] == pytest.approx(float(x_star @ a @ x_star))  # iters=0 returns x = 0
    for k in range(1, n + 1):
        assert errors[k] <= errors[k - 1] * (1 + 1e-12) + 1e-28, (k, errors[k], errors[k - 1])
    assert errors[3] < 0.5 * errors[0]  # it actually makes progress


@pytest.mark.parametrize("iters", [1, 3, 10, 25])
def test_cg_calls_hvp_at_most_iters_times(iters: int) -> None:
    a = _spd(20, seed=5)
    hvp = _Counter(lambda v: a @ v)
    conjugate_gradient(hvp, _randn(20, seed=6), iters=iters, residual_tol=1e-30)
    assert 1 <= hvp.calls <= iters


def test_cg_stops_early_on_small_residual() -> None:
    a = 3.0 * torch.eye(8, dtype=DTYPE)  # one step solves it exactly
    hvp = _Counter(lambda v: a @ v)
    b = _randn(8, seed=7)
    x = conjugate_gradient(hvp, b, iters=10)
    assert hvp.calls == 1
    assert torch.allclose(x, b / 3.0, rtol=1e-14, atol=0.0)


@pytest.mark.parametrize(
    "hvp",
    [
        lambda v: -v,  # negative definite: pᵀHp < 0
        lambda v: torch.zeros_like(v),  # pᵀHp = 0
        lambda v: torch.full_like(v, float("nan")),  # non-finite product
    ],
)
def test_cg_never_divides_by_zero(hvp: Callable[[Tensor], Tensor]) -> None:
    x = conjugate_gradient(hvp, _randn(6, seed=8), iters=10)
    assert torch.equal(x, torch.zeros(6, dtype=DTYPE))


# ---------------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------------

P = 6
_A = _randn(P, seed=10) / math.sqrt(P)


def _f(x: Tensor) -> Tensor:
    """Non-quadratic test function f(x) = Σ sin(x)·x² + (aᵀx)³."""
    a = _A.to(x.dtype)
    return (torch.sin(x) * x**2).sum() + (a @ x) ** 3


def _grad_fn(y: Tensor) -> Tensor:
    y = y.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_f(y), y)
    return g


def _hessian(x: Tensor) -> Tensor:
    return torch.autograd.functional.hessian(_f, x.detach().to(DTYPE))


def test_exact_hvp_matches_explicit_hessian_and_reuses_graph() -> None:
    x = _randn(P, seed=11).requires_grad_(True)
    f = _Counter(_f)
    grad = flat_grad(f(x), [x], create_graph=True)
    damping = 0.1
    hvp = exact_hvp(grad, x, damping=damping)
    h = _hessian(x)
    for seed in range(12, 16):  # several products through the same graph
        v = _randn(P, seed=seed)
        hv = hvp(v)
        assert not hv.requires_grad
        assert torch.allclose(hv, h @ v + damping * v, rtol=1e-12, atol=1e-12)
    assert f.calls == 1
    assert x.grad is None  # autograd.grad, not backward(): nothing accumulated


def test_exact_hvp_through_unflattened_parameters() -> None:
    # The policy's case: a flat leaf viewed as several parameter tensors.
    like = [torch.empty(2, 2, dtype=DTYPE), torch.empty(2, dtype=DTYPE)]
    x = _randn(P, seed=17).requires_grad_(True)
    w, c = unflatten(x, like)
    grad = flat_grad(_f(torch.cat([w.reshape(-1), c])), [x], create_graph=True)
    v = _randn(P, seed=18)
    assert torch.allclose(exact_hvp(grad, x)(v), _hessian(x) @ v, rtol=1e-12, atol=1e-12)


def test_exact_hvp_of_linear_function_is_damping_only() -> None:
    a = _randn(P, seed=19)
    x = _randn(P, seed=20).requires_grad_(True)
    grad = flat_grad(a @ x, [x], create_graph=True)
    v = _randn(P, seed=21)
    assert torch.equal(exact_hvp(grad, x, damping=0.5)(v), 0.5 * v)


@pytest.mark.parametrize("eps", [None, 1e-8])
def test_finite_difference_hvp_matches_exact_float64(eps: float | None) -> None:
    x = _randn(P, seed=22)
    x_before = x.clone()
    h = _hessian(x)
    hvp = finite_difference_hvp(_grad_fn, x, damping=0.01, eps=eps)
    for seed in (23, 24):
        v = _randn(P, seed=seed) * 3.0
        expected = h @ v + 0.01 * v
        hv = hvp(v)
        assert hv.dtype == DTYPE and not hv.requires_grad
        assert _rel(hv, expected) < 1e-6
    assert torch.equal(x, x_before)


def test_finite_difference_hvp_float32_auto_rule_and_paper_rule() -> None:
    x64 = _randn(P, seed=25)
    v64 = _randn(P, seed=26)
    expected = _hessian(x64) @ v64
    x32, v32 = x64.float(), v64.float()

    auto = finite_difference_hvp(_grad_fn, x32)(v32)
    assert auto.dtype == torch.float32
    err_auto = _rel(auto.double(), expected)
    assert err_auto < 1e-2

    # rllab's rule h = 1e-8/‖x‖ is meant for float64: in float32, x ± h·v rounds back to x (for
    # every entry not much smaller than ‖x‖), so the difference of gradients is (nearly) zero.
    # This is why eps=None is the default.
    h_paper = 1e-8 / (float(torch.linalg.vector_norm(x32)) + 1e-8)
    big = x32.abs() >= 0.25
    assert big.sum() >= P - 1
    assert torch.equal((x32 + h_paper * v32)[big], x32[big])
    paper = finite_difference_hvp(_grad_fn, x32, eps=1e-8)(v32)
    err_paper = _rel(paper.double(), expected)
    assert err_paper > 0.5
    assert err_paper > 100 * err_auto


@pytest.mark.parametrize("eps", [None, 1e-8])
def test_finite_difference_hvp_zero_vector(eps: float | None) -> None:
    grad_fn = _Counter(_grad_fn)
    hvp = finite_difference_hvp(grad_fn, _randn(P, seed=27), damping=0.3, eps=eps)
    hv = hvp(torch.zeros(P, dtype=DTYPE))
    assert torch.equal(hv, torch.zeros(P, dtype=DTYPE))
    assert grad_fn.calls == 0


def test_finite_difference_hvp_works_under_no_grad_with_requires_grad_x() -> None:
    x = _randn(P, seed=28).requires_grad_(True)
    v = _randn(P, seed=29)
    hvp = finite_difference_hvp(_grad_fn, x)
    with torch.no_grad():
        hv = hvp(v)
    assert not hv.requires_grad
    assert _rel(hv, _hessian(x) @ v) < 1e-6
    assert x.grad is None


# ---------------------------------------------------------------------------------------------
# Step length
# ---------------------------------------------------------------------------------------------


def test_max_step_length_hits_kl_boundary() -> None:
    h = _spd(10, seed=30)
    d = _randn(10, seed=31)
    max_kl = 0.01
    beta = max_step_length(d, h @ d, max_kl)
    assert beta.dim() == 0 and beta.dtype == DTYPE
    s = beta * d
    assert float(0.5 * s @ h @ s) == pytest.approx(max_kl, rel=1e-12, abs=0.0)


@pytest.mark.parametrize(
    "hd_factor",
    [-1.0, 0.0, float("nan"), float("inf")],
)
def test_max_step_length_degenerate_curvature_gives_zero(hd_factor: float) -> None:
    d = _randn(10, seed=32)
    beta = max_step_length(d, hd_factor * d, 0.01)
    assert beta.dim() == 0
    assert float(beta) == 0.0


def test_max_step_length_zero_direction_gives_zero() -> None:
    d = torch.zeros(4, dtype=DTYPE)
    assert float(max_step_length(d, d, 0.01)) == 0.0


# ---------------------------------------------------------------------------------------------
# Backtracking line search
# ---------------------------------------------------------------------------------------------


class _Scripted:
    """evaluate() returning scripted (loss, kl) pairs and recording its arguments."""

    def __init__(self, outcomes: list[tuple[float, float]]) -> None:
        self.outcomes = outcomes
        self.seen: list[Tensor] = []

    def __call__(self, x: Tensor) -> tuple[float, float]:
        self.seen.append(x.clone())
        return self.outcomes[min(len(self.seen) - 1, len(self.outcomes) - 1)]


def _x0_step() -> tuple[Tensor, Tensor]:
    return _randn(5, seed=40), _randn(5, seed=41)


def test_line_search_accepts_first_admissible_candidate() -> None:
    x0, full_step = _x0_step()
    evaluate = _Scripted(
        [
            (0.5, 0.05),  # k=0: improves, but violates the KL bound
            (1.5, 0.001),  # k=1: within KL, but does not improve
            (0.9, 0.005),  # k=2: admissible
            (0.1, 0.0),  # k=3: better, but must never be evaluated
        ]
    )
    res = backtracking_line_search(evaluate, x0, full_step, loss_before=1.0, max_kl=0.01)
    assert isinstance(res, LineSearchResult)
    assert res.accepted
    assert res.steps == 3
    assert len(evaluate.seen) == 3
    assert torch.equal(res.x, x0 + 0.8**2 * full_step)
    for k, seen in enumerate(evaluate.seen):
        assert torch.equal(seen, x0 + 0.8**k * full_step)
    assert res.loss == 0.9 and res.kl == 0.005
    assert res.step_fraction == 0.8**2


def test_line_search_full_step_accepted_in_one_evaluation() -> None:
    x0, full_step = _x0_step()
    evaluate = _Scripted([(0.0, 0.01)])  # kl == max_kl is admissible
    res = backtracking_line_search(evaluate, x0, full_step, loss_before=1.0, max_kl=0.01)
    assert res.accepted and res.steps == 1 and res.step_fraction == 1.0
    assert torch.equal(res.x, x0 + full_step)


def test_line_search_rejection_returns_x0_bit_for_bit() -> None:
    x0, full_step = _x0_step()
    x0_before, step_before = x0.clone(), full_step.clone()
    evaluate = _Scripted([(1.0, 0.0)])  # loss == loss_before is not an improvement
    res = backtracking_line_search(
        evaluate, x0, full_step, loss_before=1.0, max_kl=0.01, max_steps=7
    )
    assert not res.accepted
    assert res.x is x0
    assert torch.equal(res.x, x0_before)
    assert torch.equal(full_step, step_before)
    assert res.steps == 7 and len(evaluate.seen) == 7
    assert res.loss == 1.0 and res.kl == 0.0 and res.step_fraction == 0.0


@pytest.mark.parametrize(
    "outcome",
    [(float("nan"), 0.0), (0.5, float("nan")), (float("-inf"), 0.0), (0.5, float("inf"))],
)
def test_line_search_never_accepts_non_finite(outcome: tuple[float, float]) -> None:
    x0, full_step = _x0_step()
    res = backtracking_line_search(_Scripted([outcome]), x0, full_step, 1.0, 0.01, max_steps=5)
    assert not res.accepted and res.x is x0 and res.steps == 5


def test_line_search_skips_nan_candidates_then_accepts() -> None:
    x0, full_step = _x0_step()
    evaluate = _Scripted([(float("nan"), 0.0), (float("nan"), float("nan")), (0.5, 0.0)])
    res = backtracking_line_search(evaluate, x0, full_step, loss_before=1.0, max_kl=0.01)
    assert res.accepted and res.steps == 3 and res.loss == 0.5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_line_search_non_finite_step_rejected_without_evaluation(bad: float) -> None:
    x0, full_step = _x0_step()
    full_step = full_step.clone()
    full_step[2] = bad
    evaluate = _Scripted([(0.0, 0.0)])
    res = backtracking_line_search(evaluate, x0, full_step, loss_before=1.0, max_kl=0.01)
    assert not res.accepted and res.x is x0 and res.steps == 0
    assert len(evaluate.seen) == 0


@pytest.mark.parametrize("max_steps", [0, 1, 4, 15])
def test_line_search_respects_max_steps(max_steps: int) -> None:
    x0, full_step = _x0_step()
    evaluate = _Scripted([(2.0, 0.0)])
    res = backtracking_line_search(
        evaluate, x0, full_step, loss_before=1.0, max_kl=0.01, max_steps=max_steps
    )
    assert len(evaluate.seen) == max_steps == res.steps
    assert not res.accepted


def test_line_search_evaluate_may_use_autograd() -> None:
    # MAML's outer loss differentiates through the inner step, so evaluate needs autograd.
    x0 = _randn(5, seed=42).requires_grad_(True)
    full_step = -0.1 * x0.detach()

    def evaluate(x: Tensor) -> tuple[float, float]:
        y = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((y**2).sum(), y)
        adapted = y - 0.1 * g
        return float((adapted**2).sum().detach()), 0.0

    loss_before = evaluate(x0)[0]
    res = backtracking_line_search(evaluate, x0, full_step, loss_before, max_kl=0.01)
    assert res.accepted and res.steps == 1
    assert not res.x.requires_grad


# ---------------------------------------------------------------------------------------------
# Flat-vector helpers
# ---------------------------------------------------------------------------------------------


def _params() -> list[Tensor]:
    return [_randn(3, 4, seed=50), _randn(4, seed=51), _randn(1, seed=52), _randn(2, 1, 2, seed=53)]


def test_flatten_unflatten_round_trip() -> None:
    params = _params()
    flat = flatten(params)
    assert flat.shape == (sum(p.numel() for p in params),)
    back = unflatten(flat, params)
    assert [b.shape for b in back] == [p.shape for p in params]
    for b, p in zip(back, params, strict=True):
        assert torch.equal(b, p)
    assert torch.equal(flatten(back), flat)


def test_unflatten_rejects_wrong_size() -> None:
    with pytest.raises(ValueError):
        unflatten(torch.zeros(5, dtype=DTYPE), [torch.zeros(2, 2, dtype=DTYPE)])


def test_gradient_flows_through_unflatten() -> None:
    params = _params()
    weights = [_randn(*p.shape, seed=60 + i) for i, p in enumerate(params)]
    flat = flatten(params).requires_grad_(True)
    parts = zip(weights, unflatten(flat, params), strict=True)
    loss = torch.stack([(w * u).sum() for w, u in parts]).sum()
    (g,) = torch.autograd.grad(loss, flat)
    assert torch.equal(g, flatten(weights))


def test_flat_grad_fills_unused_inputs_with_zeros() -> None:
    a = _randn(3, 2, seed=70).requires_grad_(True)
    unused = _randn(4, seed=71).requires_grad_(True)
    b = _randn(2, seed=72).requires_grad_(True)
    g = flat_grad((a**2).sum() + (3.0 * b).sum(), [a, unused, b])
    assert g.shape == (6 + 4 + 2,)
    expected = torch.cat(
        [
            2.0 * a.detach().reshape(-1),
            torch.zeros(4, dtype=DTYPE),
            torch.full((2,), 3.0, dtype=DTYPE),
        ]
    )
    assert torch.equal(g, expected)
    assert not g.requires_grad


def test_flat_grad_create_graph_is_differentiable() -> None:
    x = _randn(4, seed=73).requires_grad_(True)
    g = flat_grad((x**3).sum(), [x], create_graph=True)
    assert g.requires_grad
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert torch.allclose(gg, 6.0 * x.detach(), rtol=1e-14, atol=0.0)
