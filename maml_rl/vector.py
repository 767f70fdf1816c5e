"""Generic `BatchEnv` over single Gymnasium environments, for families without a native one.

Each sub-environment receives its own task through ``reset(options={"task": task})``
(Gymnasium's vector envs send the same options to every sub-env, so tasks are set one by one).
An environment whose episode has ended is not stepped again until the next reset; it repeats
its last observation with reward 0, and the sampler masks those steps out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np

from maml_rl.tasks import BatchEnv, Task, TaskFamily, TaskFamilyError


class GymBatchEnv:
    """`num_envs` Gymnasium environments stepped one after another in this process."""

    def __init__(self, make_env: Callable[[], gym.Env], num_envs: int, max_episode_steps: int):
        self.envs = [make_env() for _ in range(num_envs)]
        self.num_envs = num_envs
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.max_episode_steps = max_episode_steps
        self._done = np.zeros(num_envs, dtype=bool)
        self._obs: np.ndarray | None = None
        self._t = 0

    def reset(self, tasks: Sequence[Task], seed: int | None = None) -> np.ndarray:
        if len(tasks) != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} tasks, got {len(tasks)}")
        observations = [
            env.reset(seed=None if seed is None else seed + i, options={"task": task})[0]
            for i, (env, task) in enumerate(zip(self.envs, tasks, strict=True))
        ]
        self._obs = np.stack(observations).astype(np.float32)
        self._done[:] = False
        self._t = 0
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        assert self._obs is not None, "reset before step"
        rewards = np.zeros(self.num_envs)
        terminated = self._done.copy()
        truncated = np.zeros(self.num_envs, dtype=bool)
        for i, env in enumerate(self.envs):
            if self._done[i]:
                continue
            obs, reward, term, trunc, _ = env.step(actions[i])
            self._obs[i], rewards[i], terminated[i], truncated[i] = obs, reward, term, trunc
        self._t += 1
        truncated |= self._t >= self.max_episode_steps
        self._done |= terminated | truncated
        return self._obs.copy(), rewards, terminated, truncated

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_batch_env(family: TaskFamily, num_envs: int) -> BatchEnv:
    """The family's native batch env if it has one, else the generic Gymnasium one."""
    native = getattr(family, "make_batch_env", None)
    if callable(native):
        return native(num_envs)
    horizon = getattr(family, "max_episode_steps", None)
    if horizon is None:
        raise TaskFamilyError(f"task family {family!r} must define max_episode_steps")
    return GymBatchEnv(family.make_env, num_envs, int(horizon))
