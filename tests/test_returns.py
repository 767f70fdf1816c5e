"""Tests for maml_rl.returns: discounted returns, GAE and masked statistics (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maml_rl.returns import discounted_returns, gae, masked_mean, masked_normalize, td_errors

F64 = torch.float64


def t64(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def random_mask(gen: torch.Generator, steps: int, *batch: int) -> torch.Tensor:
    """[T, *B] mask of episodes with random lengths in 1..T (1 then 0 along time)."""
    lengths = torch.randint(1, steps + 1, batch, generator=gen)
    return (torch.arange(steps).view(steps, *([1] * len(batch))) < lengths).to(F64)


def reference_gae(
    rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float
) -> np.ndarray:
    """A_t = Σ_l (γλ)^l δ_{t+l} over the valid steps of a 1-D episode (direct sum, no recursion)."""
    steps = len(rewards)
    length = int(mask.sum())
    out = np.zeros(steps)
    for t in range(length):
        total = 0.0
        for step in range(t, length):
            next_value = values[step + 1] if step + 1 < length else 0.0
            delta = rewards[step] + gamma * next_value - values[step]
            total += (gamma * lam) ** (step - t) * delta
        out[t] = total
    return out


# ----------------------------------------------------------------------------- returns


def test_discounted_returns_hand_worked() -> None:
    rewards = t64([1.0, 2.0, 3.0])
    mask = torch.ones(3, dtype=F64)
    # R_2 = 3, R_1 = 2 + 0.5*3 = 3.5, R_0 = 1 + 0.5*3.5 = 2.75
    expected = t64([2.75, 3.5, 3.0])
    torch.testing.assert_close(discounted_returns(rewards, mask, 0.5), expected)


def test_discounted_returns_episode_ends_early_and_padding_ignored() -> None:
    # [T=4, B=2]: column 0 runs the full horizon, column 1 ends after step 1.
    rewards = t64([[1.0, 2.0], [1.0, 4.0], [1.0, 100.0], [1.0, float("nan")]])
    mask = t64([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    expected = t64(
        [
            [1 + 0.9 * (1 + 0.9 * (1 + 0.9)), 2.0 + 0.9 * 4.0],
            [1 + 0.9 * (1 + 0.9), 4.0],
            [1.9, 0.0],
            [1.0, 0.0],
        ]
    )
    torch.testing.assert_close(expected[0], t64([3.439, 5.6]))
    torch.testing.assert_close(discounted_returns(rewards, mask, 0.9), expected)


def test_discounted_returns_multi_batch_dims_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    steps, n, k, gamma = 7, 3, 4, 0.97
    rewards = torch.randn(steps, n, k, generator=gen, dtype=F64)
    mask = random_mask(gen, steps, n, k)
    out = discounted_returns(rewards, mask, gamma)
    assert out.shape == (steps, n, k)
    r, m = rewards.numpy(), mask.numpy()
    for i in range(n):
        for j in range(k):
            length = int(m[:, i, j].sum())
            for t in range(steps):
                want = sum(gamma ** (s - t) * r[s, i, j] for s in range(t, length))
                assert out[t, i, j].item() == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------- GAE


def test_gae_hand_worked_lambda_half() -> None:
    # gamma = lam = 0.5; column 0 is valid for 3 steps, column 1 for 2 steps.
    rewards = t64([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [5.0, 5.0]])
    values = t64([[0.5, 0.5], [1.0, 1.0], [2.0, 2.0], [float("nan"), 7.0]])
    mask = t64([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    # column 0: δ = [1 + 0.5*1 - 0.5, 2 + 0.5*2 - 1, 3 + 0 - 2] = [1, 2, 1]
    #   A_2 = 1, A_1 = 2 + 0.25*1 = 2.25, A_0 = 1 + 0.25*2.25 = 1.5625
    # column 1: δ = [1 + 0.5*1 - 0.5, 2 + 0 - 1] = [1, 1] (no bootstrap after the end)
    #   A_1 = 1, A_0 = 1 + 0.25*1 = 1.25
    expected = t64([[1.5625, 1.25], [2.25, 1.0], [1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(gae(rewards, values, mask, 0.5, 0.5), expected)
    expected_deltas = t64([[1.0, 1.0], [2.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(td_errors(rewards, values, mask, 0.5), expected_deltas)


def test_gae_matches_direct_sum_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    steps, n, k, gamma, lam = 9, 2, 3, 0.95, 0.8
    rewards = torch.randn(steps, n, k, generator=gen, dtype=F64)
    values = torch.randn(steps, n, k, generator=gen, dtype=F64)
    mask = random_mask(gen, steps, n, k)
    out = gae(rewards, values, mask, gamma, lam)
    for i in range(n):
        for j in range(k):
            want = reference_gae(
                rewards[:, i, j].numpy(), values[:, i, j].numpy(), mask[:, i, j].numpy(), gamma, lam
            )
            np.testing.assert_allclose(out[:, i, j].numpy(), want, atol=1e-12)


def test_gae_lambda_one_zero_values_equals_discounted_returns() -> None:
    gen = torch.Generator().manual_seed(2)
    steps, n, k, gamma = 11, 3, 5, 0.9
    rewards = torch.randn(steps, n, k, generator=gen, dtype=F64)
    mask = random_mask(gen, steps, n, k)
    values = torch.zeros_like(rewards)
    torch.testing.assert_close(
        gae(rewards, values, mask, gamma, 1.0), discounted_returns(rewards, mask, gamma)
    )


def test_gae_lambda_zero_is_one_step_td_error() -> None:
    gen = torch.Generator().manual_seed(3)
    steps, b, gamma = 8, 6, 0.99
    rewards = torch.randn(steps, b, generator=gen, dtype=F64)
    values = torch.randn(steps, b, generator=gen, dtype=F64)
    mask = random_mask(gen, steps, b)
    expected = torch.zeros(steps, b, dtype=F64)
    for t in range(steps):
        for j in range(b):
            if mask[t, j] == 0:
                continue
            nxt = values[t + 1, j] * mask[t + 1, j] if t + 1 < steps else 0.0
            expected[t, j] = rewards[t, j] + gamma * nxt - values[t, j]
    torch.testing.assert_close(gae(rewards, values, mask, gamma, 0.0), expected)
    torch.testing.assert_close(td_errors(rewards, values, mask, gamma), expected)


def test_gae_gradcheck_wrt_values_and_rewards() -> None:
    gen = torch.Generator().manual_seed(4)
    steps, n, k = 5, 2, 2
    rewards = torch.randn(steps, n, k, generator=gen, dtype=F64, requires_grad=True)
    values = torch.randn(steps, n, k, generator=gen, dtype=F64, requires_grad=True)
    mask = random_mask(gen, steps, n, k)
    assert torch.autograd.gradcheck(lambda v: gae(rewards, v, mask, 0.9, 0.7), (values,))
    assert torch.autograd.gradcheck(lambda r: gae(r, values, mask, 0.9, 0.7), (rewards,))
    assert torch.autograd.gradcheck(lambda r: discounted_returns(r, mask, 0.9), (rewards,))


def test_gae_gradient_ignores_masked_values() -> None:
    values = t64([0.5, 1.0, 2.0, 3.0]).requires_grad_(True)
    rewards = t64([1.0, 1.0, 1.0, 1.0])
    mask = t64([1.0, 1.0, 0.0, 0.0])
    gae(rewards, values, mask, 0.9, 0.9).sum().backward()
    assert values.grad is not None
    assert values.grad[2:].abs().sum().item() == 0.0
    assert values.grad[:2].abs().sum().item() > 0.0


def test_returns_keep_dtype_float32() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0])
    mask = torch.ones(3)
    values = torch.zeros(3)
    assert discounted_returns(rewards, mask, 0.5).dtype == torch.float32
    assert gae(rewards, values, mask, 0.5, 0.5).dtype == torch.float32


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        discounted_returns(torch.zeros(3, 2, dtype=F64), torch.ones(3, dtype=F64), 0.9)
    with pytest.raises(ValueError):
        gae(torch.zeros(3, dtype=F64), torch.zeros(4, dtype=F64), torch.ones(3, dtype=F64), 1, 1)


# ----------------------------------------------------------------------------- masked stats


def test_masked_mean_values_and_all_zero_mask() -> None:
    x = t64([[1.0, float("nan")], [3.0, float("inf")], [5.0, 7.0]])
    mask = t64([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(masked_mean(x, mask), t64(2.0))
    # column 1 has no valid entry: 0, not NaN; its non-finite entries do not leak.
    torch.testing.assert_close(masked_mean(x, mask, dim=0), t64([2.0, 0.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=1), t64([1.0, 3.0, 0.0]))
    zero = masked_mean(x, torch.zeros_like(mask))
    assert zero.item() == 0.0
    kept = masked_mean(x, mask, dim=(0, 1), keepdim=True)
    assert kept.shape == (1, 1)
    torch.testing.assert_close(kept, t64([[2.0]]))


def test_masked_mean_broadcast_mask_and_numpy() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, 4, generator=gen, dtype=F64)
    mask = random_mask(gen, 6, 3, 1)  # broadcast over the last dim
    out = masked_mean(x, mask, dim=(0, 2))
    xb, mb = np.broadcast_arrays(x.numpy(), mask.numpy())
    want = (xb * mb).sum(axis=(0, 2)) / mb.sum(axis=(0, 2))
    np.testing.assert_allclose(out.numpy(), want, atol=1e-12)


def test_masked_normalize_per_task_stats() -> None:
    gen = torch.Generator().manual_seed(6)
    steps, n, k = 10, 4, 5
    x = 3.0 + 2.0 * torch.randn(steps, n, k, generator=gen, dtype=F64)
    mask = random_mask(gen, steps, n, k)
    x = torch.where(mask == 0, torch.full_like(x, float("nan")), x)  # garbage padding
    y = masked_normalize(x, mask, dim=(0, 2))
    assert torch.isfinite(y).all()
    assert (y[mask == 0] == 0).all()
    mean = masked_mean(y, mask, dim=(0, 2))
    std = masked_mean(y.square(), mask, dim=(0, 2)).sqrt()
    torch.testing.assert_close(mean, torch.zeros(n, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(std, torch.ones(n, dtype=F64), atol=1e-6, rtol=0)
    # against numpy population statistics, task by task
    for i in range(n):
        valid = mask[:, i, :].numpy() > 0
        xi = x[:, i, :].numpy()[valid]
        want = (xi - xi.mean()) / (xi.std() + 1e-8)
        np.testing.assert_allclose(y[:, i, :].numpy()[valid], want, atol=1e-12)


def test_masked_normalize_by_the_variance_matches_numpy_per_task() -> None:
    gen = torch.Generator().manual_seed(8)
    steps, n, k = 9, 3, 4
    x = -5.0 + 7.0 * torch.randn(steps, n, k, generator=gen, dtype=F64)
    mask = random_mask(gen, steps, n, k)
    y = masked_normalize(x, mask, dim=(0, 2), scale="variance")
    assert (y[mask == 0] == 0).all()
    for i in range(n):  # metaworld-algorithms: (A - mean) / (var + 1e-8), population variance
        valid = mask[:, i, :].numpy() > 0
        xi = x[:, i, :].numpy()[valid]
        want = (xi - xi.mean()) / (xi.var() + 1e-8)
        np.testing.assert_allclose(y[:, i, :].numpy()[valid], want, atol=1e-12)
    # the std-normalised values divided once more by sigma
    sigma = masked_mean((x - masked_mean(x, mask, (0, 2), keepdim=True)).square(), mask, (0, 2))
    by_std = masked_normalize(x, mask, dim=(0, 2), eps=0.0)
    torch.testing.assert_close(
        masked_normalize(x, mask, dim=(0, 2), eps=0.0, scale="variance"),
        by_std / sigma.sqrt()[None, :, None] * mask,
        rtol=1e-12,
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="unknown scale"):
        masked_normalize(x, mask, dim=0, scale="mad")


def test_masked_normalize_constant_and_empty_groups_are_finite() -> None:
    x = t64([[2.0, 1.0], [2.0, 5.0], [2.0, 9.0]]).requires_grad_(True)
    mask = t64([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    y = masked_normalize(x, mask, dim=0)
    torch.testing.assert_close(y, torch.zeros(3, 2, dtype=F64))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_masked_normalize_gradcheck() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(6, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    mask = random_mask(gen, 6, 2, 3)
    mask[0] = 1.0  # at least one valid entry per group
    assert torch.autograd.gradcheck(lambda a: masked_normalize(a, mask, dim=(0, 2)), (x,))


# ----------------------------------------------------------------------------- purity


def test_inputs_are_not_mutated() -> None:
    gen = torch.Generator().manual_seed(8)
    steps, n, k = 6, 2, 3
    rewards = torch.randn(steps, n, k, generator=gen, dtype=F64)
    values = torch.randn(steps, n, k, generator=gen, dtype=F64)
    mask = random_mask(gen, steps, n, k)
    rewards[-1] = float("nan")
    mask[-1] = 0.0
    calls = {
        "discounted_returns": lambda: discounted_returns(rewards, mask, 0.9),
        "td_errors": lambda: td_errors(rewards, values, mask, 0.9),
        "gae": lambda: gae(rewards, values, mask, 0.9, 0.95),
        "masked_mean": lambda: masked_mean(rewards, mask, dim=(0, 2)),
        "masked_normalize": lambda: masked_normalize(rewards, mask, dim=(0, 2)),
    }
    for name, call in calls.items():
        before = [rewards.clone(), values.clone(), mask.clone()]
        out = call()
        for orig, now in zip(before, (rewards, values, mask), strict=True):
            torch.testing.assert_close(now, orig, equal_nan=True, msg=f"{name} mutated input")
        assert all(out.data_ptr() != a.data_ptr() for a in (rewards, values, mask)), name
