"""Tests for maml_rl.baseline: the linear feature baseline, batched over tasks (float64)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from maml_rl import baseline
from maml_rl.baseline import advantages, features, fit, predict
from maml_rl.returns import discounted_returns, gae, masked_mean

F64 = torch.float64


def random_mask(gen: torch.Generator, steps: int, n: int, k: int, min_len: int = 1) -> torch.Tensor:
    """[T, N, K] mask of episodes with random lengths in min_len..T."""
    lengths = torch.randint(min_len, steps + 1, (n, k), generator=gen)
    return (torch.arange(steps).view(steps, 1, 1) < lengths).to(F64)


def random_problem(
    seed: int, steps: int = 40, n: int = 3, k: int = 4, d: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Observations in [-3, 3], random returns and a random-length mask."""
    gen = torch.Generator().manual_seed(seed)
    obs = 6.0 * torch.rand(steps, n, k, d, generator=gen, dtype=F64) - 3.0
    returns = torch.randn(steps, n, k, generator=gen, dtype=F64)
    mask = random_mask(gen, steps, n, k, min_len=steps // 2)
    return obs, returns, mask


def direct_ridge(
    obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float
) -> torch.Tensor:
    """Reference: per task, keep only the valid rows and solve the ridge problem densely."""
    x = features(obs, mask)
    out = []
    for i in range(obs.shape[1]):
        valid = mask[:, i, :] > 0
        xi, yi = x[:, i, :][valid], returns[:, i, :][valid]
        lhs = xi.T @ xi + reg * torch.eye(x.shape[-1], dtype=F64)
        out.append(torch.linalg.solve(lhs, xi.T @ yi))
    return torch.stack(out)


# ----------------------------------------------------------------------------- features


def test_features_layout_clipping_and_masking() -> None:
    steps, n, k, d = 3, 1, 2, 2
    obs = torch.zeros(steps, n, k, d, dtype=F64)
    obs[:, 0, 0, 0] = t = torch.tensor([20.0, -15.0, 0.5], dtype=F64)
    obs[:, 0, 0, 1] = 2.0
    obs[2, 0, 1] = float("nan")  # padding garbage
    mask = torch.ones(steps, n, k, dtype=F64)
    mask[2, 0, 1] = 0.0
    phi = features(obs, mask)
    assert phi.shape == (steps, n, k, 2 * d + 4)
    assert baseline.num_features(d) == 2 * d + 4
    clipped = torch.tensor([10.0, -10.0, 0.5], dtype=F64)
    time = torch.tensor([0.0, 0.01, 0.02], dtype=F64)
    torch.testing.assert_close(phi[:, 0, 0, 0], clipped)
    torch.testing.assert_close(phi[:, 0, 0, 1], torch.full((3,), 2.0, dtype=F64))
    torch.testing.assert_close(phi[:, 0, 0, 2], clipped.square())
    torch.testing.assert_close(phi[:, 0, 0, 3], torch.full((3,), 4.0, dtype=F64))
    torch.testing.assert_close(phi[:, 0, 0, 4], time)
    torch.testing.assert_close(phi[:, 0, 0, 5], time**2)
    torch.testing.assert_close(phi[:, 0, 0, 6], time**3)
    torch.testing.assert_close(phi[:, 0, 0, 7], torch.ones(3, dtype=F64))
    assert t.abs().max().item() == 20.0  # unclipped source untouched
    assert (phi[2, 0, 1] == 0).all()
    assert torch.isfinite(phi).all()
    assert phi.abs().max().item() == 100.0


def test_features_shape_errors() -> None:
    with pytest.raises(ValueError):
        features(torch.zeros(3, 2, 4, dtype=F64), torch.ones(3, 2, dtype=F64))
    with pytest.raises(ValueError):
        features(torch.zeros(3, 2, 4, 1, dtype=F64), torch.ones(3, 2, 5, dtype=F64))


# ----------------------------------------------------------------------------- fit / predict


def test_fit_recovers_linear_returns() -> None:
    gen = torch.Generator().manual_seed(10)
    steps, n, k, d = 50, 3, 4, 3
    obs = 4.0 * torch.rand(steps, n, k, d, generator=gen, dtype=F64) - 2.0
    mask = random_mask(gen, steps, n, k, min_len=30)
    true_w = torch.randn(n, 2 * d + 4, generator=gen, dtype=F64)
    returns = torch.einsum("tnkf,nf->tnk", features(obs, mask), true_w)
    w = fit(obs, returns, mask, reg_coeff=1e-12)
    assert w.shape == (n, 2 * d + 4) and w.dtype == F64
    torch.testing.assert_close(w, true_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(predict(obs, w, mask), returns, atol=1e-6, rtol=0)


def test_fit_matches_dense_ridge_reference() -> None:
    obs, returns, mask = random_problem(11)
    w = fit(obs, returns, mask, reg_coeff=1e-5)
    torch.testing.assert_close(w, direct_ridge(obs, returns, mask, 1e-5), atol=1e-8, rtol=1e-8)


def test_masked_rows_do_not_change_fit() -> None:
    obs, returns, mask = random_problem(12, steps=30, n=2, k=3)
    mask[:, 1, 2] = 0.0  # task 1, trajectory 2 fully masked
    mask[25:] = 0.0  # every episode ends by step 25
    clean_obs = torch.where(mask.unsqueeze(-1) > 0, obs, torch.zeros_like(obs))
    clean_ret = torch.where(mask > 0, returns, torch.zeros_like(returns))
    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=F64)
    pad = garbage[torch.arange(mask.numel()) % 4].view(mask.shape)
    dirty_obs = torch.where(mask.unsqueeze(-1) > 0, obs, pad.unsqueeze(-1))
    dirty_ret = torch.where(mask > 0, returns, pad.flip(0))
    assert not torch.isfinite(dirty_obs).all() and not torch.isfinite(dirty_ret).all()

    w_clean = fit(clean_obs, clean_ret, mask)
    w_dirty = fit(dirty_obs, dirty_ret, mask)
    assert torch.isfinite(w_dirty).all()
    torch.testing.assert_close(w_dirty, w_clean, atol=1e-10, rtol=1e-10)
    # rows removed: truncate the horizon, and drop task 1's masked trajectory.
    w_trunc = fit(obs[:25], returns[:25], mask[:25])
    torch.testing.assert_close(w_dirty, w_trunc, atol=1e-10, rtol=1e-10)
    w_task1 = fit(obs[:25, 1:, :2], returns[:25, 1:, :2], mask[:25, 1:, :2])
    torch.testing.assert_close(w_dirty[1:], w_task1, atol=1e-10, rtol=1e-10)
    values = predict(dirty_obs, w_dirty, mask)
    assert torch.isfinite(values).all() and (values[mask == 0] == 0).all()


def test_tasks_are_fitted_independently() -> None:
    obs, returns, mask = random_problem(13, n=4)
    w_all = fit(obs, returns, mask)
    for i in range(4):
        sl = slice(i, i + 1)
        w_one = fit(obs[:, sl], returns[:, sl], mask[:, sl])
        torch.testing.assert_close(w_all[sl], w_one, atol=1e-10, rtol=1e-10)
    # changing one task's data leaves the others' weights unchanged
    returns2 = returns.clone()
    returns2[:, 2] = 100.0 * returns2[:, 2] + 5.0
    w_changed = fit(obs, returns2, mask)
    torch.testing.assert_close(w_changed[[0, 1, 3]], w_all[[0, 1, 3]], atol=1e-12, rtol=0)
    assert not torch.allclose(w_changed[2], w_all[2])


def test_singular_problem_single_zero_step_is_finite() -> None:
    steps, d = 5, 3
    obs = torch.zeros(steps, 1, 1, d, dtype=F64)
    mask = torch.zeros(steps, 1, 1, dtype=F64)
    mask[0] = 1.0
    returns = torch.full((steps, 1, 1), 4.0, dtype=F64)
    w = fit(obs, returns, mask)
    assert torch.isfinite(w).all()
    # only the constant feature is non-zero on the valid row (t = 0): w_const = 4 / (1 + reg)
    torch.testing.assert_close(w[0, -1], torch.tensor(4.0 / (1.0 + 1e-5), dtype=F64))
    torch.testing.assert_close(w[0, :-1], torch.zeros(2 * d + 3, dtype=F64))
    value = predict(obs, w, mask)[0, 0, 0]
    torch.testing.assert_close(value, torch.tensor(4.0, dtype=F64), atol=1e-4, rtol=0)


def test_all_masked_task_gives_zero_weights_and_leaves_others() -> None:
    obs, returns, mask = random_problem(14, n=2)
    mask[:, 0] = 0.0
    obs[:, 0] = float("nan")
    returns[:, 0] = float("inf")
    w = fit(obs, returns, mask)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w[0], torch.zeros_like(w[0]))
    torch.testing.assert_close(w[1:], fit(obs[:, 1:], returns[:, 1:], mask[:, 1:]))
    assert (predict(obs, w, mask)[:, 0] == 0).all()


class CholeskySpy:
    """Wraps ``torch.linalg.cholesky_ex``; records batch sizes, infos and matrices."""

    def __init__(self, force_fail_first: int | None = None) -> None:
        self.orig = torch.linalg.cholesky_ex
        self.force_fail_first = force_fail_first
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, a: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        chol, info = self.orig(a, **kwargs)
        if self.force_fail_first is not None and not self.calls:
            info = info.clone()
            info[self.force_fail_first] = 1
            chol = chol.clone()
            chol[self.force_fail_first] = float("nan")
        self.calls.append((a.clone(), info.clone()))
        return chol, info


def test_regularisation_escalates_for_failing_task_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Task 0 has a constant observation 3, so the columns o = 3 and o^2 = 9 are exactly
    # collinear: the second Cholesky pivot is exactly 81n - (27n)^2 / 9n = 0 while reg is below
    # the rounding of 81n. reg 1e-20 fails until it has grown to ~1e-12.
    gen = torch.Generator().manual_seed(15)
    steps = 100
    obs = torch.full((steps, 2, 1, 1), 3.0, dtype=F64)
    obs[:, 1] = torch.rand(steps, 1, 1, generator=gen, dtype=F64)
    mask = torch.ones(steps, 2, 1, dtype=F64)
    returns = torch.randn(steps, 2, 1, generator=gen, dtype=F64)
    returns[:, 0, 0] = 2.0 + 0.5 * torch.arange(steps, dtype=F64) / 100.0

    spy = CholeskySpy()
    monkeypatch.setattr(torch.linalg, "cholesky_ex", spy)
    w = fit(obs, returns, mask, reg_coeff=1e-20)
    monkeypatch.undo()

    assert torch.isfinite(w).all()
    first_matrix, first_info = spy.calls[0]
    assert first_matrix.shape[0] == 2
    assert first_info[0] > 0 and first_info[1] == 0  # the first factorisation of task 0 fails
    assert len(spy.calls) > 2  # several escalations were needed
    assert all(a.shape[0] == 1 for a, _ in spy.calls[1:])  # only the failing task is retried
    assert spy.calls[-1][1].item() == 0  # and it eventually succeeds
    # the well-posed task is unaffected by its neighbour
    torch.testing.assert_close(w[1:], fit(obs[:, 1:], returns[:, 1:], mask[:, 1:], 1e-20))
    # the recovered fit reproduces task 0's (linear-in-time) returns
    values = predict(obs, w, mask)
    torch.testing.assert_close(values[:, 0], returns[:, 0], atol=1e-5, rtol=0)
    # with reg 0 escalation cannot help: still finite, zero weights, neighbour unaffected
    w0 = fit(obs, returns, mask, reg_coeff=0.0)
    torch.testing.assert_close(w0[0], torch.zeros_like(w0[0]))
    torch.testing.assert_close(w0[1:], fit(obs[:, 1:], returns[:, 1:], mask[:, 1:], 0.0))


def test_regularisation_multiplied_by_ten_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    obs, returns, mask = random_problem(16, n=3)
    spy = CholeskySpy(force_fail_first=1)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", spy)
    w = fit(obs, returns, mask, reg_coeff=1e-3)
    monkeypatch.undo()
    assert len(spy.calls) == 2
    (a1, _), (a2, info2) = spy.calls
    assert a1.shape[0] == 3 and a2.shape[0] == 1 and info2.item() == 0
    eye = torch.eye(a1.shape[-1], dtype=F64)
    torch.testing.assert_close(a2[0] - a1[1], 9e-3 * eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        w[1], direct_ridge(obs[:, 1:2], returns[:, 1:2], mask[:, 1:2], 1e-2)[0]
    )
    torch.testing.assert_close(
        w[[0, 2]], fit(obs[:, [0, 2]], returns[:, [0, 2]], mask[:, [0, 2]], 1e-3)
    )


def test_non_finite_valid_data_gives_finite_zero_weights() -> None:
    obs, returns, mask = random_problem(17, n=3)
    obs[3, 0, 0, 1] = float("nan")  # NaN observation at a valid step of task 0
    returns[:, 1] = torch.where(
        mask[:, 1] > 0, torch.full_like(mask[:, 1], 1e308), 0.0
    )  # X^T y overflows for task 1
    w = fit(obs, returns, mask)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w[:2], torch.zeros_like(w[:2]))
    torch.testing.assert_close(w[2:], fit(obs[:, 2:], returns[:, 2:], mask[:, 2:]))


def test_fit_argument_validation() -> None:
    obs, returns, mask = random_problem(18, n=1)
    with pytest.raises(ValueError):
        fit(obs, returns, mask, reg_coeff=-1.0)
    with pytest.raises(ValueError):
        fit(obs, returns, mask, max_tries=0)
    with pytest.raises(ValueError):
        fit(obs, returns[:-1], mask)
    with pytest.raises(ValueError, match="1 at valid steps and 0"):
        fit(obs, returns, mask * 0.5)  # weights, not validity


def allocated_bytes(function: Callable[[], object]) -> int:
    """The bytes torch's CPU allocator handed out while `function` ran (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        function()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())


def test_features_allocate_only_their_output() -> None:
    """The features are a batch's largest tensor (2D + 4 numbers per step, float64 for the fit):
    they are built in place, without intermediates of their size (which took 4.5x their size,
    and the fit 9.7x, before)."""
    obs, returns, mask = random_problem(31, steps=100, n=8, k=5, d=30)
    obs = obs.float()
    size = 100 * 8 * 5 * (2 * 30 + 4) * 8
    assert allocated_bytes(lambda: features(obs, mask, F64)) <= 1.05 * size
    # the Gram product's operand copies: at most 3 more (memory.estimate_bytes counts 3 at once)
    assert allocated_bytes(lambda: baseline._normal_equations(obs, returns, mask)) <= 4.5 * size


def test_fit_and_predict_keep_input_dtype() -> None:
    obs, returns, mask = random_problem(19)
    w64 = fit(obs, returns, mask)
    w32 = fit(obs.float(), returns.float(), mask.float())
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32.double(), w64, atol=1e-3, rtol=1e-3)
    values = predict(obs.float(), w32, mask.float())
    assert values.dtype == torch.float32
    torch.testing.assert_close(values.double(), predict(obs, w64, mask), atol=1e-3, rtol=1e-3)


def test_predict_is_features_dot_weights() -> None:
    obs, _, mask = random_problem(20)
    gen = torch.Generator().manual_seed(21)
    w = torch.randn(obs.shape[1], 2 * obs.shape[-1] + 4, generator=gen, dtype=F64)
    values = predict(obs, w, mask)
    phi = features(obs, mask)
    for t, i, j in [(0, 0, 0), (5, 1, 3), (19, 2, 1)]:
        want = phi[t, i, j] @ w[i] if mask[t, i, j] > 0 else torch.tensor(0.0, dtype=F64)
        torch.testing.assert_close(values[t, i, j], want)
    assert (values[mask == 0] == 0).all()


# ----------------------------------------------------------------------------- advantages


def test_advantages_normalised_per_task() -> None:
    obs, rewards, mask = random_problem(22, n=3, k=5)
    rewards = rewards + torch.arange(3, dtype=F64).view(1, 3, 1) * 10.0  # different task scales
    rewards = torch.where(mask > 0, rewards, torch.full_like(rewards, float("nan")))
    adv = advantages(obs, rewards, mask, gamma=0.99, gae_lambda=0.95)
    assert adv.shape == mask.shape and torch.isfinite(adv).all()
    assert (adv[mask == 0] == 0).all()
    mean = masked_mean(adv, mask, dim=(0, 2))
    std = masked_mean((adv - mean.view(1, -1, 1)).square(), mask, dim=(0, 2)).sqrt()
    torch.testing.assert_close(mean, torch.zeros(3, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(std, torch.ones(3, dtype=F64), atol=1e-6, rtol=0)


def test_advantages_unnormalised_is_gae_with_fitted_baseline() -> None:
    obs, rewards, mask = random_problem(23)
    adv = advantages(obs, rewards, mask, gamma=0.9, gae_lambda=0.8, normalize=False)
    returns = discounted_returns(rewards, mask, 0.9)
    values = predict(obs, fit(obs, returns, mask), mask)
    torch.testing.assert_close(adv, gae(rewards, values, mask, 0.9, 0.8))
    assert not torch.allclose(adv, gae(rewards, torch.zeros_like(values), mask, 0.9, 0.8))


def test_advantages_are_detached() -> None:
    obs, rewards, mask = random_problem(24)
    obs.requires_grad_(True)
    rewards.requires_grad_(True)
    adv = advantages(obs, rewards, mask, gamma=0.99, gae_lambda=0.95)
    assert not adv.requires_grad and adv.grad_fn is None


# ----------------------------------------------------------------------------- purity


def test_inputs_are_not_mutated() -> None:
    obs, returns, mask = random_problem(25)
    obs[-1] = float("nan")
    returns[-1] = float("inf")
    mask[-1] = 0.0
    w = fit(obs, returns, mask)
    calls = {
        "features": lambda: features(obs, mask),
        "fit": lambda: fit(obs, returns, mask),
        "predict": lambda: predict(obs, w, mask),
        "advantages": lambda: advantages(obs, returns, mask, 0.99, 0.95),
    }
    for name, call in calls.items():
        before = [obs.clone(), returns.clone(), mask.clone(), w.clone()]
        call()
        for orig, now in zip(before, (obs, returns, mask, w), strict=True):
            torch.testing.assert_close(now, orig, equal_nan=True, msg=f"{name} mutated input")


def test_fit_does_not_depend_on_torchs_thread_count() -> None:
    """An ant-sized batch ([T=100, N=10, K=10, D=105], F = 214): the normal equations' sums
    round differently on 1 and 2 threads unless the fit runs on one. On ant batches the
    difference reached 1e-4 in float32 weights, and every advantage, inner step and
    evaluation would depend on the machine's load."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(100, 10, 10, 105, generator=g, dtype=torch.float64)  # float64 weights:
    returns = torch.randn(100, 10, 10, generator=g, dtype=torch.float64)  # no rounding hides it
    mask = (torch.rand(100, 10, 10, generator=g) > 0.1).float()
    previous = torch.get_num_threads()
    weights = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            weights.append(fit(obs, returns, mask))
            assert torch.get_num_threads() == count  # restored after the fit
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(weights[0], weights[1])
