"""Task families for tests/test_process_env.py, in a module of their own: the worker processes
of `ProcessBatchEnv` (forkserver) unpickle a family's bound ``make_env`` by reference, so they
import this module; it imports only Gymnasium, numpy and the navigation family (the test module
itself would cost every worker an import of torch and pytest, seconds on a loaded machine).
`GymOnly` is also the base of other tests' plug-in families.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from maml_rl_envs.navigation import Navigation2D, NavigationTask

SEED = 100
FAILING_ENV = 4  # the global index of the environment that raises
FAILING_STEP = 5


class _Counting(gym.Wrapper):
    """A navigation env that remembers its reset seed and counts its steps."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        self.reset_seed, self.t = seed, 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: np.ndarray) -> Any:
        self.t += 1
        return self.env.step(action)


class _FailsAtStep5(_Counting):
    """Raises at (0-based) step 5 in the environment reset with seed SEED + FAILING_ENV."""

    def step(self, action: np.ndarray) -> Any:
        if self.reset_seed == SEED + FAILING_ENV and self.t == FAILING_STEP:
            raise RuntimeError("simulator exploded")
        return super().step(action)


class _ReportsSuccess(_Counting):
    """info["success"]: from step 2 on, in the environments whose reset seed is divisible by 3."""

    def step(self, action: np.ndarray) -> Any:
        obs, reward, terminated, truncated, info = super().step(action)
        success = self.reset_seed is not None and self.reset_seed % 3 == 0 and self.t >= 2
        return obs, reward, terminated, truncated, {**info, "success": success}


class GymOnly:
    """2D navigation with only what every task family has (``sample_tasks``, ``make_env``,
    ``max_episode_steps``): no native batch env (the Gymnasium backends only), no oracle
    features, no drawing hook. Takes Navigation2D's keyword arguments."""

    def __init__(self, max_episode_steps: int = 12, **navigation: float) -> None:
        self.navigation = Navigation2D(max_episode_steps=max_episode_steps, **navigation)
        self.max_episode_steps = max_episode_steps

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[NavigationTask]:
        return self.navigation.sample_tasks(n, rng)

    def make_env(self) -> gym.Env:
        return self.navigation.make_env()


class FailsAtStep5(GymOnly):
    def make_env(self) -> gym.Env:
        return _FailsAtStep5(self.navigation.make_env())


class ReportsSuccess(GymOnly):
    def make_env(self) -> gym.Env:
        return _ReportsSuccess(self.navigation.make_env())


class PrefersProcs(GymOnly):
    sampler_backend = "procs"


class NativeButPrefersProcs(Navigation2D):
    sampler_backend = "procs"


class PrefersGpu(GymOnly):
    sampler_backend = "gpu"


class BrokenMakeEnv(GymOnly):
    def make_env(self) -> gym.Env:
        raise ValueError("no simulator\nlicence")


class SamplerReadsSuccess(ReportsSuccess):
    reports_success = True
