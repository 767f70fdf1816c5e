"""The family checker catches each broken rule and names it in one line.

`GoodFamily` passes; each fake below breaks exactly one rule.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import usable_families

import maml_rl
import maml_rl.render as render_module
import maml_rl.sampler as sampler_module
from maml_rl.build import build
from maml_rl.checker import SKIPPED, FamilyCheckWarning, check_family
from maml_rl.cli import main
from maml_rl.config import from_dict
from maml_rl.policy import Normal, parameters_of
from maml_rl.tasks import Task, TaskFamilyError, make_family


@dataclass(frozen=True)
class Target:
    position: float


class LineEnv(gym.Env):
    """A point on a line; reward -|x - target|; truncated after `horizon` steps."""

    task: Task  # a Target here; the subclasses' families give tasks of their own types

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
        (NoOptionsFamily(), "unexpected keyword argument 'options'"),
        (TaskBlindFamily(), "give the same rewards"),
        (ForgetfulFamily(), "does not survive an autoreset"),
        (EndlessFamily(), "did not end within 10 steps"),
        (NoisyFamily(), "two episodes with the same seed 0, task and actions differ"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else "",
)
def test_environment_rules(family: Any, match: str) -> None:
    assert match in violation(family)


class _LeavesOnABigFirstAction(LineEnv):
    """Observation box ±1; the point stays, but the observation leaves the box after a first
    action above 0.5 (a quarter of check_env's uniform samples)."""

    def __init__(self, horizon: int = 10) -> None:
        super().__init__(horizon)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        obs = np.array([self.x + 5.0 * (self.t == 1 and action[0] > 0.5)], np.float32)
        return obs, -abs(self.x - self.task.position), False, self.t >= self.horizon, {}


class LeavesOnABigFirstActionFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _LeavesOnABigFirstAction(self.max_episode_steps)


def test_the_verdict_is_the_same_every_run() -> None:
    """check_env steps random actions; unseeded, its verdict changed from run to run."""
    verdicts = set()
    for _ in range(40):
        try:
            check_family(LeavesOnABigFirstActionFamily(), seed=0)
            verdicts.add("passed")
        except TaskFamilyError as error:
            verdicts.add(str(error))
    assert len(verdicts) == 1, verdicts


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


# ------------------------------------------------------------------ issue 37: the checker's
# mechanism (whole episodes, several tasks and action sequences, the sampler's actions)


@dataclass(frozen=True)
class Cell:
    goal: tuple[int, int]


class GridEnv(LineEnv):
    """A 5x5 grid; the goal cell is hidden (the observation is the position only); reward -1
    per step until the goal is reached (terminated, reward 0). Actions: stay, up, down, left,
    right."""

    MOVES = ((0, 0), (0, 1), (0, -1), (-1, 0), (1, 0))
    action_space: gym.spaces.Discrete

    def __init__(self, horizon: int, start: int = 0) -> None:
        super().__init__(horizon)
        self.observation_space = gym.spaces.Box(0.0, 4.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(5, start=start)
        self.task, self.position = Cell((4, 4)), (2, 2)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed, options=options)  # the task, the step counter
        self.position = (2, 2)
        return np.array(self.position, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}")
        dx, dy = self.MOVES[int(action) - int(self.action_space.start)]
        self.position = (
            min(max(self.position[0] + dx, 0), 4),
            min(max(self.position[1] + dy, 0), 4),
        )
        self.t += 1
        reached = self.position == self.task.goal
        obs = np.array(self.position, np.float32)
        return obs, 0.0 if reached else -1.0, reached, self.t >= self.horizon, {}


class SparseGridFamily:
    """A correct sparse-reward family: goals anywhere but the start cell."""

    max_episode_steps = 20
    start = 0

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        cells = [(x, y) for x in range(5) for y in range(5) if (x, y) != (2, 2)]
        return [Cell(cells[i]) for i in rng.integers(0, len(cells), size=n)]

    def make_env(self) -> gym.Env:
        return GridEnv(self.max_episode_steps, self.start)


def test_a_correct_sparse_reward_family_passes_at_every_seed() -> None:
    """Item 1: five random steps from the start both give -1; whole episodes, several tasks
    and action sequences tell the tasks apart."""
    for seed in range(20):
        check_family(SparseGridFamily(), seed=seed)


TINY = {"meta_batch_size": 2, "fast_batch_size": 2, "num_batches": 1, "hidden_sizes": [8],
        "cg_iters": 2}  # fmt: skip


def _tiny_argv(env: str) -> list[str]:
    return ["--set", f"env={env}", *(f"{key}={value}" for key, value in TINY.items())]


@pytest.mark.parametrize("how", ["--no-check", "check: false", "train(check=False)"])
def test_a_run_can_skip_a_wrong_check_and_says_what_it_skipped(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 1: TaskBlindFamily is refused; a run may go on without the check, and says so."""
    run = str(tmp_path / "run")
    assert (
        main(["train", "navigation", "--out", run, *_tiny_argv("test_checker:TaskBlindFamily")])
        == 2
    )
    assert "give the same rewards" in capsys.readouterr().err
    if how == "train(check=False)":
        cfg = from_dict({"env": "test_checker:TaskBlindFamily", **TINY})
        maml_rl.train(cfg, run, progress=False, tensorboard=False, check=False)
    else:
        extra = ["--no-check"] if how == "--no-check" else ["check=false"]
        argv = ["train", "navigation", "--out", run, "--no-progress"]
        argv += _tiny_argv("test_checker:TaskBlindFamily")
        assert main(argv + extra) == 0  # check=false joins the --set pairs
    out = capsys.readouterr().out
    assert "family check skipped" in out and SKIPPED in out


# ------------------------------------------------------------------ broken families caught


class _TaskShapedActions(LineEnv):
    """A lenient env whose action space is 2-D for tasks right of 0, 1-D for the others."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        size = 2 if self.task.position > 0 else 1
        self.action_space = gym.spaces.Box(-1.0, 1.0, (size,), np.float32)
        return obs, info


class TaskShapedActionsFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _TaskShapedActions(self.max_episode_steps)


@dataclass(frozen=True)
class Waypoints:
    positions: list[float]


class _ListMutatingEnv(LineEnv):
    def reward_target(self) -> float:
        self.task.positions.append(self.x)  # the env changes its task
        return self.task.positions[0]


class MutatedListFamily(GoodFamily):
    """Item 3 (and 7): a frozen dataclass holding a list that the env mutates."""

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [Waypoints([float(p)]) for p in rng.uniform(-1.0, 1.0, size=n)]

    def make_env(self) -> gym.Env:
        return _ListMutatingEnv(self.max_episode_steps)


class Counter:
    """Mutable, yet hashable and compared by value: hashing cannot catch a change."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counter) and other.value == self.value

    def __hash__(self) -> int:
        return 0


@dataclass(frozen=True)
class CountedTarget:
    position: float
    counter: Counter


class _CounterMutatingEnv(LineEnv):
    def reward_target(self) -> float:
        self.task.counter.value += 1
        return self.task.position


class MutatedObjectFamily(GoodFamily):
    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [CountedTarget(float(p), Counter(0.0)) for p in rng.uniform(-1.0, 1.0, size=n)]

    def make_env(self) -> gym.Env:
        return _CounterMutatingEnv(self.max_episode_steps)


class _LeavesLate(LineEnv):
    """Observation box ±1; the point drifts 0.12 a step and leaves it at step 9."""

    def __init__(self, horizon: int = 20) -> None:
        super().__init__(horizon)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        self.x = 0.12 * self.t
        reward = -abs(self.x - self.task.position) - 0.01 * float(np.asarray(action).sum())
        return np.array([self.x], np.float32), reward, False, self.t >= self.horizon, {}


class LeavesItsSpaceLateFamily(GoodFamily):
    max_episode_steps = 20

    def make_env(self) -> gym.Env:
        return _LeavesLate(self.max_episode_steps)


class _MultiDiscreteActions(LineEnv):
    def __init__(self, horizon: int = 10) -> None:
        super().__init__(horizon)
        self.action_space = gym.spaces.MultiDiscrete([3, 3])

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return super().step(np.asarray(action, np.float32) - 1.0)


class MultiDiscreteFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _MultiDiscreteActions(self.max_episode_steps)


class _RejectsTheBound(LineEnv):
    """Action box ±0.1; an off-by-one bound check rejects an action at the bound (which
    clipped Gaussian actions hit, uniform samples never)."""

    action_space: gym.spaces.Box

    def __init__(self, horizon: int = 10) -> None:
        super().__init__(horizon)
        self.action_space = gym.spaces.Box(-0.1, 0.1, (1,), np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not np.all(np.abs(action) < self.action_space.high):
            raise ValueError("action out of bounds")
        return super().step(action)


class RejectsTheBoundFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _RejectsTheBound(self.max_episode_steps)


@dataclass(frozen=True)
class ShapedTarget:
    position: float
    shape: Any


class LambdaTaskFamily(GoodFamily):
    """Item 7: each task holds a fresh lambda (unpicklable, compares by identity)."""

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        return [ShapedTarget(float(p), lambda d: -abs(d)) for p in rng.uniform(-1, 1, size=n)]


class _CounterKeptOnAutoreset(LineEnv):
    """Resets its step counter only with a task; truncates at t == horizon exactly, so an
    episode after reset() without options never ends."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        t = self.t
        obs, info = super().reset(seed=seed, options=options)
        self.t = 0 if options and "task" in options else t
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, _, info = super().step(action)
        return obs, reward, terminated, self.t == self.horizon, info


class CounterKeptOnAutoresetFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _CounterKeptOnAutoreset(self.max_episode_steps)


@pytest.mark.parametrize(
    ("family", "match"),
    [
        (TaskShapedActionsFamily(), "the action space depends on the task"),  # item 2
        (MutatedListFamily(), "is not hashable (unhashable type: 'list')"),  # items 3, 7
        (MutatedObjectFamily(), "the env changed task"),  # item 3
        (LeavesItsSpaceLateFamily(), "step 9 of an episode returned an observation outside"),
        (MultiDiscreteFamily(), "action space MultiDiscrete([3 3]) is not supported"),  # 5
        (RejectsTheBoundFamily(), "raised ValueError: action out of bounds"),  # item 6
        (LambdaTaskFamily(), "is not picklable"),  # item 7
        (CounterKeptOnAutoresetFamily(), "after reset() without options"),  # item 8
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else "",
)
def test_broken_families_of_issue_37_are_refused_for_the_right_reason(
    family: Any, match: str
) -> None:
    assert match in violation(family)


# ------------------------------------------------- what the sampler sends (items 5, 6)


class DiscreteFromOneFamily(SparseGridFamily):
    """Discrete(5, start=1): the env rejects action 0."""

    start = 1


def test_discrete_actions_from_start_reach_the_env_and_categorical_runs_log_entropy(
    tmp_path: Path,
) -> None:
    """Items 5 and 8: the categorical policy's index is shifted by the space's start (the env
    rejects 0); a categorical run logs policy/entropy."""
    check_family(DiscreteFromOneFamily(), seed=0)
    cfg = from_dict({"env": "test_checker:DiscreteFromOneFamily", **TINY})
    rows = maml_rl.train(cfg, tmp_path / "run", progress=False, tensorboard=False)
    entropy = rows[0]["policy/entropy"]
    assert 0.0 < entropy <= np.log(5) + 1e-6


class _ValidatesBounds(LineEnv):
    """Action box ±0.1 that the env validates instead of clipping."""

    def __init__(self, horizon: int = 10) -> None:
        super().__init__(horizon)
        self.action_space = gym.spaces.Box(-0.1, 0.1, (1,), np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(np.asarray(action, np.float32)):
            raise ValueError(f"action {action} outside {self.action_space}")
        return super().step(action)


class ValidatesBoundsFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _ValidatesBounds(self.max_episode_steps)


def test_gaussian_actions_reach_a_box_env_clipped_and_the_batch_keeps_them_unclipped() -> None:
    """Item 6: the sampler clips Box actions to the space before step; the batch keeps the
    policy's sample (its log-probability is the gradient's)."""
    cfg = from_dict({"env": "test_checker:ValidatesBoundsFamily", **TINY})
    check_built_family, _, sampler = build(cfg, torch.Generator().manual_seed(0))
    check_family(check_built_family, seed=0)
    tasks = check_built_family.sample_tasks(2, np.random.default_rng(0))
    batch = sampler.sample(parameters_of(sampler.policy), tasks, seed=0, per_task=False)
    sampler.close()
    assert float(batch.actions.abs().max()) > 0.1  # unclipped in the batch


@pytest.mark.parametrize("name", ["navigation", "halfcheetah-vel"])
def test_clipping_leaves_the_built_in_families_trajectories_unchanged(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 6: navigation and the MuJoCo families clip to the same bounds themselves."""
    cfg = from_dict({"env": name, "env_kwargs": {"max_episode_steps": 20}, **TINY})
    batches = []
    for clip in (True, False):
        if not clip:
            monkeypatch.setattr(sampler_module, "env_actions", lambda actions, space: actions)
        family, _, sampler = build(cfg, torch.Generator().manual_seed(0))
        tasks = family.sample_tasks(2, np.random.default_rng(0))
        batches.append(sampler.sample(parameters_of(sampler.policy), tasks, 3, per_task=False))
        sampler.close()
    clipped, unclipped = batches
    assert float(clipped.actions.abs().max()) > 1.0  # some actions left the box
    for field in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(clipped, field), getattr(unclipped, field)), field


# ------------------------------------------------- observation spaces (item 5)


class _Picture(gym.ObservationWrapper):
    """The line env seen as an 8x8 picture with the point's column lit."""

    def __init__(self, env: gym.Env, space: gym.spaces.Box) -> None:
        super().__init__(env)
        self.observation_space = space

    def observation(self, observation: np.ndarray) -> np.ndarray:
        picture = np.zeros((8, 8), np.float32)
        picture[:, int(np.clip((observation[0] + 4.0), 0, 7))] = 1.0
        space = cast(gym.spaces.Box, self.observation_space)  # the Box given to __init__
        return (picture * space.high.max()).astype(space.dtype).reshape(space.shape)


class ImageFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _Picture(LineEnv(self.max_episode_steps), gym.spaces.Box(0.0, 1.0, (8, 8)))


class Uint8ImageFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        space = gym.spaces.Box(0, 255, (8, 8, 1), np.uint8)
        return _Picture(LineEnv(self.max_episode_steps), space)


class _Clocked(gym.ObservationWrapper):
    def __init__(self, env: LineEnv) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Dict(
            {
                "position": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                "clock": gym.spaces.Box(0.0, 1.0, (1,), np.float32),
            }
        )

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        line: LineEnv = self.env.unwrapped  # type: ignore[assignment]
        clock = np.array([line.t / line.horizon], np.float32)
        return {"position": np.array([observation[0], 0.0], np.float32), "clock": clock}


class DictFamily(GoodFamily):
    def make_env(self) -> gym.Env:
        return _Clocked(LineEnv(self.max_episode_steps))


class FlattenPolicy(torch.nn.Module):
    """A Gaussian policy for any Box observation [B, *shape]: flatten, then linear."""

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box) -> None:
        super().__init__()
        self.scale = float(np.max(observation_space.high))
        self.linear = torch.nn.Linear(int(np.prod(observation_space.shape)), action_space.shape[0])
        self.log_std = torch.nn.Parameter(torch.zeros(action_space.shape[0]))

    def forward(self, observations: torch.Tensor) -> Normal:
        return Normal(self.linear(observations.flatten(1) / self.scale), self.log_std)


@pytest.mark.parametrize(
    ("env", "policy"),
    [
        ("ImageFamily", "test_checker:FlattenPolicy"),
        ("Uint8ImageFamily", "test_checker:FlattenPolicy"),
        ("DictFamily", "policy_helpers:DictPolicy"),
    ],
)
def test_check_and_train_agree_on_observation_spaces(
    env: str, policy: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 5: the family passes the checker on its own (a Dict is no false "outside the
    observation space"); the built-in MLP is refused in one line by check and train alike; a
    policy that takes the observations passes both."""
    family = getattr(sys.modules[__name__], env)()
    check_family(family, seed=0)
    target = f"env=test_checker:{env}"
    sizes = [f"{key}={value}" for key, value in TINY.items()]
    assert main(["check", "navigation", "--set", target, *sizes]) == 2
    check_err = capsys.readouterr().err
    run = str(tmp_path / "mlp")
    assert main(["train", "navigation", "--out", run, "--set", target, *sizes]) == 2
    assert capsys.readouterr().err == check_err
    assert "built-in MLP policy needs a flat Box" in check_err and check_err.count("\n") == 1
    with_policy = [target, f"policy={policy}", *sizes]
    assert main(["check", "navigation", "--set", *with_policy]) == 0
    assert "all checks passed" in capsys.readouterr().out
    run = str(tmp_path / "custom")
    assert main(["train", "navigation", "--out", run, "--no-progress", "--set", *with_policy]) == 0


def test_a_dict_observation_family_passes_the_checker() -> None:
    """Item 5: the checker compared np.asarray(dict) with the space: a false cause."""
    check_family(DictFamily(), seed=0)


# ----------------------------------------------------------------- smaller (item 8)


def test_skipped_iterations_are_numbered_from_1_like_the_progress_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = from_dict({"env": "test_faults:NaNOnFirstSample", **TINY, "num_batches": 2})
    maml_rl.train(cfg, tmp_path / "run", progress=False, tensorboard=False)
    out = capsys.readouterr().out
    assert "iteration 1 skipped" in out and "iteration 2/2" in out, out


class Undrawable(GoodFamily):
    """Neither a MuJoCo model nor a drawing hook: render cannot draw it."""


def test_render_refuses_a_family_it_cannot_draw_before_sampling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = from_dict({"env": "test_checker:Undrawable", **TINY})
    maml_rl.train(cfg, tmp_path / "run", progress=False, tensorboard=False)

    def sampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("sampled before refusing")

    monkeypatch.setattr(render_module, "method_batches", sampling)
    with pytest.raises(TaskFamilyError, match="cannot render"):
        render_module.adaptation_clips(tmp_path / "run", steps=(0,), num_eval_tasks=2)


# ------------------------------------------------- every built-in family, seeds 0-19


MUJOCO_FAMILIES_BY_DEFAULT = ("halfcheetah-vel",)
# ML45's environments are ML10's and 40 more of the same Sawyer code, and 20 seeds of them take
# about 100 s: it is checked at seed 0 (test_families.py) and smoke-trained (test_meta_world.py)
ONE_SEED_ONLY = ("metaworld-ml45",)


@pytest.mark.parametrize(
    "name",
    [
        name if name in ("navigation", *MUJOCO_FAMILIES_BY_DEFAULT) else
        pytest.param(name, marks=pytest.mark.slow)
        for name in usable_families() if name not in ONE_SEED_ONLY
    ],
)  # fmt: skip
def test_every_built_in_family_passes_at_seeds_0_to_19(name: str) -> None:
    family = make_family(name)
    for seed in range(20):
        check_family(family, seed=seed)
