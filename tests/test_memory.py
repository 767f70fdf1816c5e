"""The up-front memory estimate: its formula, and one-line refusals before any allocation."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from maml_rl.errors import ResourceError
from maml_rl.memory import (
    GIB,
    RunSizes,
    check_fits,
    check_run,
    environment_bytes,
    estimate_bytes,
    num_parameters,
)
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
    evaluation = (  # 3 steps: 4 batches, one batch's activations, 4 sets of per-task parameters
        4 * samples * (2 + 2 + 6) * 4
        + samples * (8 + 8) * 4 * 4
        + 4 * 4 * num_parameters(2, 2, (8, 8)) * 2 * 4
    )
    assert estimate_bytes(RunSizes(2, 2, (8, 8), 10, 4, 3, 3, 4, meta_step=False)) == evaluation
    # wide observations (the ant's 105) against a small policy: the baseline fit's float64
    # features and their two copies, not the activations, are the larger term
    wide = (
        4 * samples * (105 + 2 + 6) * 4
        + 3 * samples * (2 * 105 + 4) * 8
        + 4 * 4 * num_parameters(105, 2, (8, 8)) * 2 * 4
    )
    assert estimate_bytes(RunSizes(105, 2, (8, 8), 10, 4, 3, 3, 4, meta_step=False)) == wide


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


# --- the environments' share (one Gymnasium environment per trajectory) ---

MIB = 2**20
LINUX = Path("/proc/self/statm").exists()


class HeavyEnv(gym.Env):
    """An environment holding `mib` MiB of touched memory (as Meta-World's models do)."""

    closed = 0

    def __init__(self, mib: int) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.mib = mib
        self.buffer = np.zeros(0)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.buffer = np.ones(self.mib * MIB // 8)  # written, so resident
        return np.zeros(3, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return np.zeros(3, np.float32), 0.0, False, False, {}

    def close(self) -> None:
        HeavyEnv.closed += 1
        self.buffer = np.zeros(0)


class HeavyFamily:
    max_episode_steps = 100

    def __init__(self, mib: int) -> None:
        self.mib = mib

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[float]:
        return [float(x) for x in rng.uniform(size=n)]

    def make_env(self) -> gym.Env:
        return HeavyEnv(self.mib)


def test_the_environments_add_n_k_times_their_size_to_the_estimate() -> None:
    sizes = partial(RunSizes, obs_dim=2, act_dim=2, hidden_sizes=(8, 8), horizon=10, num_tasks=4,
                    trajectories=3, num_steps=1, itemsize=4)  # fmt: skip
    without = estimate_bytes(sizes())
    assert estimate_bytes(sizes(env_bytes=1000)) == without + 4 * 3 * 1000
    with pytest.raises(ResourceError) as error:
        check_run(sizes(env_bytes=GIB), available=8 * GIB)
    message = str(error.value)
    assert "12 environments of 1,024.0 MiB (12.0 GiB)" in message and "\n" not in message
    check_run(sizes(env_bytes=GIB // 2), available=8 * GIB)  # 6 GiB fits


@pytest.mark.skipif(not LINUX, reason="resident memory is read from /proc/self/statm")
def test_environment_bytes_measures_what_one_more_environment_holds() -> None:
    closed = HeavyEnv.closed

    def make_one(i: int) -> gym.Env:
        env = HeavyEnv(16)
        env.reset(seed=i)
        return env

    measured = environment_bytes(make_one, count=4)
    assert 15 * MIB <= measured <= 18 * MIB, measured / MIB
    assert HeavyEnv.closed == closed + 5  # every environment it built is closed


@pytest.mark.skipif(not LINUX, reason="resident memory is read from /proc/self/statm")
def test_a_run_whose_environments_do_not_fit_is_refused_before_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As ML45 at its protocol on 24 GiB: the meta-step alone fits, its environments do not."""
    from maml_rl.build import run_sizes, sampled_environment_bytes
    from maml_rl.config import load
    from maml_rl.configs import find_config

    cfg = load(find_config("navigation"), {"sampler": "sync", "meta_batch_size": 40,
                                            "fast_batch_size": 25})  # fmt: skip
    family = HeavyFamily(16)
    assert 15 * MIB <= sampled_environment_bytes(family, cfg) <= 18 * MIB
    monkeypatch.setattr("maml_rl.memory.available_bytes", lambda: 18 * GIB)
    check_run(
        run_sizes(cfg, family=family)
    )  # 1,000 environments of 16 MiB: 15.6 GiB, fit in 18 ...
    monkeypatch.setattr("maml_rl.memory.available_bytes", lambda: 15 * GIB)
    with pytest.raises(ResourceError, match=r"1,000 environments of 1[5-8]\.[0-9] MiB") as error:
        check_run(run_sizes(cfg, family=family))  # ... not in 15 GiB
    assert "(max_envs caps the environments held at once)" in str(error.value)
    # ... unless max_envs caps them: 250 environments (chunks of 10 tasks) of 16 MiB, 3.9 GiB
    capped = run_sizes(replace(cfg, max_envs=260), family=family)
    assert capped.envs_held == 250
    check_run(capped)
    monkeypatch.setattr("maml_rl.memory.available_bytes", lambda: 3 * GIB)
    with pytest.raises(ResourceError, match=r"250 environments of 1[5-8]\.[0-9] MiB"):
        check_run(capped)
    # native batch environments (navigation on "auto") and Ray's actors are not counted
    assert (
        sampled_environment_bytes(family, load(find_config("navigation"), {"sampler": "ray"})) == 0
    )
    navigation = load(find_config("navigation"))
    from maml_rl.tasks import make_family

    assert sampled_environment_bytes(make_family("navigation", {}), navigation) == 0


def test_check_estimates_the_memory_of_a_config_not_of_a_bare_familys_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`maml-rl check FAMILY` has no run's sizes (the defaults stand in): it checks the family,
    not whether 40 x 20 environments of it fit; a config, or sizes given with --set, are."""
    from maml_rl.cli import main

    monkeypatch.setattr("maml_rl.memory.available_bytes", lambda: 2**20)  # 1 MiB: nothing fits
    assert main(["check", "navigation"]) == 0
    assert main(["check", "navigation", "--set", "fast_batch_size=5"]) == 2
    assert main(["check", "navigation-steps2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("GiB (estimate)" in line for line in err), err


def test_an_evaluation_is_estimated_without_the_meta_steps_caches() -> None:
    """Meta-World ML1 at its protocol (512x512 policy, H = 500, environments of about 27 MiB):
    the final evaluation on 25 held-out tasks after 0..3 steps fits in 20 GiB, its training
    iteration (10 tasks, 1 step) too; 3 steps of training on 25 tasks would not."""
    ml1 = partial(RunSizes, obs_dim=39, act_dim=4, hidden_sizes=(512, 512), horizon=500,
                  trajectories=10, itemsize=4, env_bytes=27 * MIB)  # fmt: skip
    evaluation = ml1(num_tasks=25, num_steps=3, meta_step=False)
    assert 8 * GIB < estimate_bytes(evaluation) < 10 * GIB
    check_run(evaluation, available=20 * GIB)
    check_run(ml1(num_tasks=10, num_steps=1), available=20 * GIB)
    with pytest.raises(ResourceError):
        check_run(ml1(num_tasks=25, num_steps=3), available=20 * GIB)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux's /proc")
def test_process_tree_bytes_counts_the_descendants() -> None:
    """A child whose own grandchild holds 256 MiB: the tree holds them, the child does not."""
    import subprocess
    import sys

    from maml_rl.memory import process_tree_bytes

    grandchild = (
        "b = bytearray(256 << 20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True);"
        " import sys; sys.stdin.read()"
    )
    child = (
        "import subprocess, sys; "
        f"g = subprocess.Popen([sys.executable, '-c', {grandchild!r}], stdin=subprocess.PIPE, "
        "stdout=subprocess.PIPE, text=True); print(g.stdout.readline(), end='', flush=True); "
        "sys.stdin.read(); g.stdin.close(); g.wait()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        measured = process_tree_bytes(process.pid)
        assert measured is not None
        assert measured.own < 100 * 2**20
        assert len(measured.descendants) == 1 and measured.descendants[0] >= 256 * 2**20
        assert measured.tree == measured.own + measured.descendants[0]
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)
    assert process_tree_bytes(process.pid) is None  # gone
