"""The oracle baseline's view of a task family: task parameters appended to every observation.

The oracle (Finn et al. 2017, Sec. 5.3) is trained by plain TRPO on tasks from the
distribution, observing `family.oracle_features(task)` beside each observation, and is not
adapted. `OracleFamily` wraps any family that defines `oracle_features(task) -> [F]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from maml_rl.tasks import BatchEnv, Task, TaskFamily, TaskFamilyError
from maml_rl.vector import make_batch_env, native_batch_env

Features = Callable[[Task], np.ndarray]


def _extend_box(space: gym.spaces.Space, num_features: int) -> gym.spaces.Box:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise TaskFamilyError(f"the oracle needs a flat Box observation space, got {space}")
    low = np.concatenate([space.low, np.full(num_features, -np.inf)]).astype(np.float32)
    high = np.concatenate([space.high, np.full(num_features, np.inf)]).astype(np.float32)
    return gym.spaces.Box(low, high, dtype=np.float32)


class OracleObservation(gym.ObservationWrapper):
    """A single env whose observation is [obs, oracle_features(task)]."""

    def __init__(self, env: gym.Env, features: Features, default_task: Task) -> None:
        super().__init__(env)
        self.features = features
        self._task_features = np.asarray(features(default_task), dtype=np.float32)
        self.observation_space = _extend_box(env.observation_space, self._task_features.size)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if options and "task" in options:
            self._task_features = np.asarray(self.features(options["task"]), dtype=np.float32)
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([observation, self._task_features]).astype(np.float32)


class OracleBatchEnv:
    """A BatchEnv whose observations [B, D] become [B, D + F] with each env's task features."""

    def __init__(self, env: BatchEnv, features: Features, num_features: int) -> None:
        self.env, self.features = env, features
        self.num_envs, self.max_episode_steps = env.num_envs, env.max_episode_steps
        self.action_space = env.action_space
        self.observation_space = _extend_box(env.observation_space, num_features)
        self._task_features = np.zeros((env.num_envs, num_features), dtype=np.float32)

    def reset(self, tasks: Sequence[Task], seed: int | None = None) -> np.ndarray:
        self._task_features = np.stack([self.features(t) for t in tasks]).astype(np.float32)
        return np.concatenate([self.env.reset(tasks, seed), self._task_features], axis=1)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        obs, reward, terminated, truncated = self.env.step(actions)
        return np.concatenate([obs, self._task_features], axis=1), reward, terminated, truncated

    def close(self) -> None:
        self.env.close()


class OracleFamily:
    """Wraps a family so its environments observe the task parameters."""

    def __init__(self, family: TaskFamily) -> None:
        features = getattr(family, "oracle_features", None)
        if not callable(features):
            raise TaskFamilyError(
                f"the oracle baseline needs {type(family).__name__}.oracle_features(task)"
            )
        self.family, self.features = family, features
        self._probe_task = family.sample_tasks(1, np.random.default_rng(0))[0]
        self.num_features = int(np.asarray(features(self._probe_task)).size)
        self.max_episode_steps = getattr(family, "max_episode_steps", None)

    def __repr__(self) -> str:
        return f"Oracle({self.family!r})"

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        return self.family.sample_tasks(n, rng)

    def make_env(self) -> gym.Env:
        return OracleObservation(self.family.make_env(), self.features, self._probe_task)

    def make_batch_env(self, num_envs: int, stepper: str | None = None) -> OracleBatchEnv:
        """The wrapped family's batch env ("auto" backend, or its native one with `stepper`)."""
        if stepper is None:
            env = make_batch_env(self.family, num_envs)
        else:
            env = native_batch_env(self.family, num_envs, stepper)
        return OracleBatchEnv(env, self.features, self.num_features)
