"""The up-front memory estimate: its formula, and one-line refusals before any allocation."""

from __future__ import annotations

import pytest

from maml_rl.errors import ResourceError
from maml_rl.memory import GIB, RunSizes, check_fits, check_run, estimate_bytes, num_parameters
from maml_rl.policy import GaussianMLPPolicy


def test_num_parameters_counts_the_policy() -> None:
    policy = GaussianMLPPolicy(3, 2, (5, 4))
    assert num_parameters(3, 2, (5, 4)) == sum(p.numel() for p in policy.parameters())


def test_estimate_is_the_documented_sum() -> None:
    samples = 4 * 3 * 10
    expected = (
        2 * samples * (2 + 2 + 6) * 4
        + 2 * samples * (8 + 8) * 8 * 4
        + 3 * 4 * num_parameters(2, 2, (8, 8)) * 6 * 4
    )
    assert estimate_bytes(RunSizes(2, 2, (8, 8), 10, 4, 3, 1, 4)) == expected


def test_shipped_navigation_is_well_under_a_gigabyte() -> None:
    needed = estimate_bytes(RunSizes(2, 2, (64, 64), 100, 20, 20, 1, 4))
    assert 0.05 * GIB < needed < 1 * GIB


@pytest.mark.parametrize(
    ("sizes", "what"),
    [
        (dict(num_tasks=100_000), "100,000 tasks"),
        (dict(hidden_sizes=(100_000, 100_000)), "100000x100000 policy"),
        (dict(horizon=100_000_000), "100,000,000 steps"),
    ],
)
def test_impossible_sizes_are_refused_with_the_estimate(sizes: dict, what: str) -> None:
    run = dict(obs_dim=2, act_dim=2, hidden_sizes=(64, 64), horizon=100, num_tasks=20,
               trajectories=20, num_steps=1, itemsize=4) | sizes  # fmt: skip
    with pytest.raises(ResourceError) as error:
        check_run(RunSizes(**run), available=16 * GIB)
    message = str(error.value)
    assert what in message and "GiB (estimate)" in message and "\n" not in message
    check_run(RunSizes(**(run | dict(num_tasks=20, hidden_sizes=(64, 64), horizon=100))), 16 * GIB)


def test_unknown_memory_never_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("maml_rl.memory.available_bytes", lambda: None)
    check_fits("anything", 10**18)
