"""The family checker catches each broken rule and names it in one line.

`GoodFamily` passes; each fake below breaks exactly one rule.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from maml_rl.checker import FamilyCheckWarning, check_family
from maml_rl.tasks import TaskFamilyError


@dataclass(frozen=True)
class Target:
    position: float


class LineEnv(gym.Env):
    """A point on a line; reward -|x - target|; truncated after `horizon` steps."""

    def __init__(self, horizon: int = 10) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.horizon, self.task, self.x, self.t = horizon, Target(0.0), 0.0, 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options and "task" in options:
            self.task = options["task"]
        self.x, self.t = float(self.np_random.uniform(-0.1, 0.1)), 0
        return np.array([self.x], np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.x += float(np.clip(action[0], -1.0, 1.0))
        self.t += 1
        reward = -abs(self.x - self.reward_target())
        return np.array([self.x], np.float32), reward, False, self.t >= self.horizon, {}

    def reward_target(self) -> float:
        return self.task.position


class GoodFamily:
    max_episode_steps = 10

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [Target(float(p)) for p in rng.uniform(-1.0, 1.0, size=n)]

    def make_env(self) -> gym.Env:
        return LineEnv(self.max_episode_steps)


def violation(family: Any) -> str:
    with pytest.raises(TaskFamilyError) as error:
        check_family(family, seed=0)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"task family {type(family).__name__}:")
    return message


def test_good_family_passes() -> None:
    check_family(GoodFamily(), seed=0)
    check_family(GoodFamily(), seed=123)


# ------------------------------------------------------------------------------ tasks


class GlobalCounterFamily(GoodFamily):
    """Ignores its generator: every call draws new tasks."""

    def __init__(self) -> None:
        self.counter = itertools.count()

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [Target(float(next(self.counter))) for _ in range(n)]


@dataclass
class MutableTarget:
    position: float


class MutableTaskFamily(GoodFamily):
    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [MutableTarget(float(p)) for p in rng.uniform(-1.0, 1.0, size=n)]


class DictTaskFamily(GoodFamily):
    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [{"position": float(p)} for p in rng.uniform(-1.0, 1.0, size=n)]


@dataclass(frozen=True)
class LockedTarget:
    position: float
    lock: Any = dataclasses.field(default_factory=threading.Lock, compare=False)


class UnpicklableTaskFamily(GoodFamily):
    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [LockedTarget(float(p)) for p in rng.uniform(-1.0, 1.0, size=n)]


class ShortListFamily(GoodFamily):
    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return super().sample_tasks(n, rng)[:-1]


class RaisingFamily(GoodFamily):
    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        raise RuntimeError("no tasks today\nsecond line")


class OneTaskFamily(GoodFamily):
    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [Target(0.5)] * n


class SameWithinDrawFamily(GoodFamily):
    """Uses its rng, but every task of one draw is the same."""

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [Target(float(rng.uniform(-1.0, 1.0)))] * n


@pytest.mark.parametrize(
    ("family", "match"),
    [
        (GlobalCounterFamily(), "not deterministic"),
        (MutableTaskFamily(), "frozen=True"),
        (DictTaskFamily(), "not a dataclass"),
        (UnpicklableTaskFamily(), "not picklable"),
        (ShortListFamily(), "list of 8 tasks"),
        (RaisingFamily(), "sample_tasks raised RuntimeError: no tasks today second line"),
        (OneTaskFamily(), "sample_tasks ignores its rng"),
        (SameWithinDrawFamily(), "identical tasks"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else "",
)
def test_task_rules(family: Any, match: str) -> None:
    assert match in violation(family)


# -------------------------------------------------------------------------- environment


class NotAnEnvFamily(GoodFamily):
    def make_env(self) -> Any:
        return object()


class OutOfSpaceEnv(LineEnv):
    def __init__(self, horizon: int = 10) -> None:
        super().__init__(horizon)
        self.observation_space = gym.spaces.Box(5.0, 6.0, (1,), np.float32)


class OutOfSpaceFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return OutOfSpaceEnv(self.max_episode_steps)


class Float64Env(LineEnv):
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        return obs.astype(np.float64), info


class WrongDtypeFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return Float64Env(self.max_episode_steps)


class NoOptionsEnv(LineEnv):
    def reset(self, *, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:  # type: ignore[override]
        return super().reset(seed=seed)


class NoOptionsFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return NoOptionsEnv(self.max_episode_steps)


class TaskBlindEnv(LineEnv):
    def reward_target(self) -> float:
        return 0.3


class TaskBlindFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return TaskBlindEnv(self.max_episode_steps)


class ForgetfulEnv(LineEnv):
    """Falls back to a default task on every reset without one (breaks autoreset)."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.task = Target(0.0)
        return super().reset(seed=seed, options=options)


class ForgetfulFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return ForgetfulEnv(self.max_episode_steps)


class EndlessFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return LineEnv(horizon=10**6)


class NoisyEnv(LineEnv):
    """Reward noise from a generator that reset(seed=...) does not control, from the second
    step on (check_env compares first steps only)."""

    noise = np.random.default_rng()

    def reward_target(self) -> float:
        return self.task.position + (float(self.noise.normal()) if self.t > 1 else 0.0)


class NoisyFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return NoisyEnv(self.max_episode_steps)


class NoHorizonFamily(GoodFamily):
    max_episode_steps = None  # type: ignore[assignment]


class FloatHorizonFamily(GoodFamily):
    max_episode_steps = 10.0  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("family", "match"),
    [
        (NoHorizonFamily(), "defines no max_episode_steps"),
        (FloatHorizonFamily(), "max_episode_steps must be a positive int, got 10.0"),
        (NotAnEnvFamily(), "must return a gymnasium.Env"),
        (OutOfSpaceFamily(), "check_env"),
        (WrongDtypeFamily(), "check_env"),
        (NoOptionsFamily(), "check_env"),
        (TaskBlindFamily(), "give the same rewards"),
        (ForgetfulFamily(), "does not survive an autoreset"),
        (EndlessFamily(), "did not end within 10 steps"),
        (NoisyFamily(), "two episodes with the same seed 0, task and actions differ"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else "",
)
def test_environment_rules(family: Any, match: str) -> None:
    assert match in violation(family)


def test_check_env_failure_is_named_in_one_line() -> None:
    message = violation(OutOfSpaceFamily())
    assert "fails gymnasium's check_env" in message
    assert "\x1b[" not in message and len(message) <= 300


class DoubleCloseEnv(LineEnv):
    def close(self) -> None:
        if getattr(self, "closed", False):
            raise RuntimeError("already closed")
        self.closed = True


class DoubleCloseFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return DoubleCloseEnv(self.max_episode_steps)


def test_closing_twice_must_work() -> None:
    assert "closing its env twice raised RuntimeError: already closed" in violation(
        DoubleCloseFamily()
    )


class OffsetReward(gym.Wrapper):
    """A plain wrapper around a registered env: reward + task offset."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.task = Target(0.0)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if options and "task" in options:
            self.task = options["task"]
        return self.env.reset(seed=seed)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward) + self.task.position, terminated, truncated, info


class WrappedRegisteredEnvFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return OffsetReward(gym.make("Pendulum-v1", max_episode_steps=self.max_episode_steps))


def test_plain_wrapper_around_a_registered_env_passes() -> None:
    """check_env cannot rebuild such an env from its spec; the checker must not mind."""
    check_family(WrappedRegisteredEnvFamily(), seed=0)


class UnpicklableFamily(GoodFamily):
    def __init__(self) -> None:
        self.lock = threading.Lock()


def test_unpicklable_family_is_a_warning_not_an_error() -> None:
    with pytest.warns(FamilyCheckWarning, match="not picklable"):
        check_family(UnpicklableFamily(), seed=0)


class _EscapesBox(LineEnv):
    def __init__(self, horizon: int = 10) -> None:
        super().__init__(horizon)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs + 5.0 * (self.t >= 3), reward, terminated, truncated, info  # leaves at t=3


class EscapesItsSpaceFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _EscapesBox(self.max_episode_steps)


class _NaNReward(LineEnv):
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, float("nan") if self.t == 4 else reward, terminated, truncated, info


class NaNRewardFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _NaNReward(self.max_episode_steps)


@pytest.mark.parametrize(
    ("family", "match"),
    [
        (EscapesItsSpaceFamily(), "returned an observation outside the observation space"),
        (NaNRewardFamily(), "returned the reward nan"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else "",
)
def test_rollout_rules(family: Any, match: str) -> None:
    assert match in violation(family)
