"""Success rates: the per-step flags a family reports, their episode and batch aggregates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from maml_rl.diagnostics import success_metrics
from maml_rl.evaluate import mean_success
from maml_rl.policy import build_policy, parameters_of
from maml_rl.sampler import Sampler
from maml_rl.tasks import TaskFamilyError
from maml_rl.types import Batch


def _batch(success: Sequence[Sequence[float]] | None, mask: Sequence[Sequence[float]]) -> Batch:
    """A batch of one task, K = len(mask[0]) trajectories, T = len(mask) steps."""
    m = torch.tensor(mask, dtype=torch.float64)[:, None, :]  # [T, 1, K]
    t, _, k = m.shape
    return Batch(
        observations=torch.zeros(t, 1, k, 1, dtype=torch.float64),
        actions=torch.zeros(t, 1, k, 1, dtype=torch.float64),
        rewards=torch.zeros(t, 1, k, dtype=torch.float64),
        mask=m,
        success=None if success is None else torch.tensor(success, dtype=torch.float64)[:, None],
    )


def test_an_episode_succeeds_if_any_valid_step_does() -> None:
    # trajectory 0: success at step 1; 1: never; 2: only after its episode ended (masked out)
    success = [[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]]
    mask = [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0]]
    episodes = _batch(success, mask).episode_success
    assert episodes is not None and episodes.tolist() == [[1.0, 0.0, 0.0]]
    assert _batch(None, mask).episode_success is None


def test_success_metrics_and_per_task_rates_are_the_fractions_of_successful_episodes() -> None:
    mask = [[1, 1, 1, 1]]
    pre, mid, post = (
        _batch([[1, 0, 0, 0]], mask),
        _batch([[1, 1, 0, 0]], mask),
        _batch([[1, 1, 1, 0]], mask),
    )
    assert success_metrics([pre, mid, post]) == {
        "success/pre_update": 0.25,
        "success/after_step_1": 0.5,
        "success/post_update": 0.75,
    }
    assert success_metrics([_batch(None, mask), post]) == {}
    np.testing.assert_array_equal(mean_success([pre, post]), [[0.25], [0.75]])
    assert mean_success([_batch(None, mask)]) is None


@dataclass(frozen=True)
class FlagTask:
    succeed_at: int  # the step at which the episode reports success (-1: never)


class FlagEnv(gym.Env):
    """obs = [t]; reports info["success"] only at step `succeed_at` of its task."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self) -> None:
        self.task = FlagTask(-1)
        self.t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.task = (options or {}).get("task", self.task)
        self.t = 0
        return np.zeros(1), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        return (
            np.array([float(self.t)]),
            0.0,
            False,
            False,
            {"success": self.t == self.task.succeed_at},
        )


def _policy() -> torch.nn.Module:
    return build_policy(
        FlagEnv.observation_space, FlagEnv.action_space, (4,), "tanh", 1.0,
        torch.Generator().manual_seed(0),
    )  # fmt: skip


class FlagFamily:
    reports_success = True
    max_episode_steps = 4

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[FlagTask]:
        return [FlagTask(int(s)) for s in rng.integers(-1, 6, size=n)]

    def make_env(self) -> FlagEnv:
        return FlagEnv()


class FlagFamilyWithNative(FlagFamily):
    def make_batch_env(self, num_envs: int) -> Any:
        from maml_rl.vector import GymBatchEnv

        env = GymBatchEnv(self.make_env, num_envs, self.max_episode_steps)
        del env.success  # a native batch env that does not report success
        return env


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_the_sampler_records_the_steps_each_env_reported_success_at(backend: str) -> None:
    family = FlagFamily()
    tasks = [FlagTask(2), FlagTask(-1), FlagTask(5), FlagTask(4)]  # 5: after H = 4, never seen
    policy = _policy()
    sampler = Sampler(family, policy, trajectories_per_task=2, backend=backend)
    try:
        batch = sampler.sample(parameters_of(policy), tasks, seed=0, per_task=False)
    finally:
        sampler.close()
    assert batch.success is not None
    # step index t holds the flag of the (t + 1)-th env step
    expected = torch.zeros(4, 4, 2)
    expected[1, 0], expected[3, 3] = 1.0, 1.0
    torch.testing.assert_close(batch.success, expected)
    episodes = batch.episode_success
    assert episodes is not None and episodes.tolist() == [[1, 1], [0, 0], [0, 0], [1, 1]]


def test_a_success_family_whose_batch_env_has_no_success_array_is_refused() -> None:
    family = FlagFamilyWithNative()
    policy = _policy()
    sampler = Sampler(family, policy, trajectories_per_task=1, backend="native")
    with pytest.raises(TaskFamilyError, match=r"reports_success.*no `success` array"):
        sampler.sample(parameters_of(policy), [FlagTask(1)], seed=0, per_task=False)
