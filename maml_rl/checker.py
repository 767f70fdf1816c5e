"""Check a task family before training: `check_family` names the first violation in one line.

The rules, in the order they are checked (docs/task-families.md, "The checker"):

1. ``sample_tasks(n, rng)`` returns n instances of frozen dataclasses holding immutable values
   (a task must be hashable: tuples, not lists, dicts or arrays, so no environment can change
   it), that survive pickling (they cross process boundaries and checkpoints), the same list
   for the same seed and another for another seed;
2. the family has ``max_episode_steps``, an int >= 1 (or its own ``make_batch_env``);
3. ``make_env()`` returns a ``gymnasium.Env`` whose action space is a ``Box`` (a Gaussian
   policy; the sampler clips its actions to the box) or a ``Discrete`` (a categorical policy;
   actions ``start .. start + n - 1``), the same spaces for every task, and that passes
   Gymnasium's ``check_env`` (render checks skipped; closing is checked on the env itself);
4. whole episodes, with the actions the sampler sends (`maml_rl.actions.env_actions` of
   Gaussian or uniform categorical samples), are deterministic given seed, task and actions;
   every observation stays in the observation space, every reward is finite, and every
   episode ends within ``max_episode_steps``, also after ``reset()`` without options;
5. the env reads its task: over whole episodes, several tasks and several action sequences,
   some two tasks differ in rewards, observations, episode ends or ``info`` (a sparse reward
   that is the same until a goal is reached passes);
6. the task survives an autoreset: after an episode with task A ends, ``reset()`` without
   options runs task A again; and the env changes no task;
7. the env can be closed twice.

The family object itself need not be picklable (the sampler builds its environments in this
process); if it is not, a `FamilyCheckWarning` says so, since process-based vector envs and
``spawn`` need it. `SKIPPED` says what a run without the check (``--no-check``) leaves unchecked.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from maml_rl.actions import env_actions
from maml_rl.tasks import Task, TaskFamily, TaskFamilyError

NUM_TASKS = 8
NUM_ACTION_SEQUENCES = 3
MAX_EPISODE_STEPS_CHECKED = 1000
SKIPPED = (
    "the family check was skipped: tasks (frozen, hashable, picklable, seeded), the horizon, "
    "the env's spaces and Gymnasium's check_env, deterministic episodes, observations in "
    "their space, finite rewards, episode ends, the env reading and keeping its task and "
    "closing are not verified"
)
"""What a run started without the family check (``--no-check``, ``check: false``) says."""

# check_env's advice that does not make an environment wrong for this package: MuJoCo
# observations are unbounded, policy-side action boxes are scaled (e.g. [-10, 10]), and task
# environments are wrappers by design.
ADVISORY_WARNINGS = (
    "is different from the unwrapped version",
    "space minimum value is -infinity",
    "space maximum value is infinity",
    "recommend using a symmetric and normalized space",
    "Not able to test alternative render modes",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class FamilyCheckWarning(UserWarning):
    """Something worth knowing about a family that does not stop it from training."""


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace and colour codes; cut to `limit` characters."""
    line = " ".join(_ANSI.sub("", str(text)).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_family(family: TaskFamily, seed: int = 0, action_std: float = 1.0) -> None:
    """Raise `TaskFamilyError` naming the first rule `family` breaks; return None if it passes.

    action_std: the standard deviation of the Gaussian actions sent to a Box env (the
    policy's initial one, config key init_std), clipped to the box as the sampler clips them.
    """
    name = type(family).__name__
    tasks = _check_tasks(family, name, seed)
    horizon = _check_horizon(family, name)
    try:
        pickle.dumps(family)
    except Exception as error:
        warnings.warn(
            f"{name}: the family object is not picklable ({one_line(error, 120)}); "
            "process-based vector environments will not work",
            FamilyCheckWarning,
            stacklevel=2,
        )
    distinct = _distinct(tasks, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = _make_env(family, name)
        try:
            probe = _Probe(env, name, seed, horizon)
            probe.check_spaces(distinct)
            _check_with_gymnasium(env, distinct[0], name, seed, caught)
            probe.check_episodes(distinct, action_std)
        except BaseException:
            env.close()
            raise
    _check_close(env, name)


def _fail(name: str, message: str) -> TaskFamilyError:
    return TaskFamilyError(one_line(f"task family {name}: {message}"))


def _check_tasks(family: TaskFamily, name: str, seed: int) -> list[Task]:
    draws = []
    for _ in range(2):
        try:
            draws.append(family.sample_tasks(NUM_TASKS, np.random.default_rng(seed)))
        except Exception as error:
            raise _fail(name, f"sample_tasks raised {type(error).__name__}: {error}") from error
    first, second = draws
    if not isinstance(first, Sequence) or len(first) != NUM_TASKS:
        raise _fail(name, f"sample_tasks({NUM_TASKS}, rng) must return a list of {NUM_TASKS} tasks")
    for task in first:
        if not dataclasses.is_dataclass(task) or isinstance(task, type):
            raise _fail(name, f"task {task!r} is not a dataclass instance")
        if not type(task).__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise _fail(name, f"task class {type(task).__name__} must be @dataclass(frozen=True)")
        try:
            hash(task)
        except TypeError as error:
            raise _fail(
                name,
                f"task {task!r} is not hashable ({error}): a task must hold immutable values "
                "(tuples, not lists, dicts or arrays), so that no environment can change it",
            ) from error
    for task in first:  # before comparing draws: an unpicklable field compares by identity
        try:
            restored = pickle.loads(pickle.dumps(task))
        except Exception as error:
            raise _fail(name, f"task {task!r} is not picklable: {error}") from error
        if restored != task:
            raise _fail(
                name,
                f"task {task!r} does not survive pickling (got {restored!r}): a field that "
                "compares by identity (a function, an object without __eq__)?",
            )
    if list(first) != list(second):
        raise _fail(name, f"sample_tasks is not deterministic: two draws with seed {seed} differ")
    other = family.sample_tasks(NUM_TASKS, np.random.default_rng(seed + 1))
    if list(other) == list(first):
        raise _fail(
            name,
            f"sample_tasks ignores its rng: seeds {seed} and {seed + 1} give the same tasks "
            "(draw them from the numpy Generator it is given)",
        )
    return list(first)


def _check_horizon(family: TaskFamily, name: str) -> int:
    """The longest episode allowed: max_episode_steps (or the checker's cap without one)."""
    horizon = getattr(family, "max_episode_steps", None)
    if horizon is None:
        if not callable(getattr(family, "make_batch_env", None)):
            raise _fail(name, "defines no max_episode_steps (the sampler's horizon)")
        return MAX_EPISODE_STEPS_CHECKED
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise _fail(name, f"max_episode_steps must be a positive int, got {horizon!r}")
    return int(horizon)


def _distinct(tasks: list[Task], name: str) -> list[Task]:
    """The different tasks of a draw, in order (at least two)."""
    distinct: list[Task] = []
    for task in tasks:
        if task not in distinct:
            distinct.append(task)
    if len(distinct) < 2:
        raise _fail(name, f"sample_tasks drew {NUM_TASKS} identical tasks; a family needs variety")
    return distinct


def _make_env(family: TaskFamily, name: str) -> gym.Env:
    try:
        env = family.make_env()
    except Exception as error:
        raise _fail(name, f"make_env raised {type(error).__name__}: {error}") from error
    if not isinstance(env, gym.Env):
        raise _fail(name, f"make_env must return a gymnasium.Env, got {type(env).__name__}")
    return env


def _check_with_gymnasium(
    env: gym.Env, task: Task, name: str, seed: int, caught: list[warnings.WarningMessage]
) -> None:
    try:
        env.reset(seed=seed, options={"task": task})
        # check_env's close check rebuilds the env from env.spec, which fails for any plain
        # gym.Wrapper around a gymnasium.make'd env; closing is checked by _check_close.
        check_env(env, skip_render_check=True, skip_close_check=True)
    except Exception as error:
        raise _fail(
            name, f"its env fails gymnasium's check_env: {type(error).__name__}: {error}"
        ) from error
    for warning in caught:
        message = str(warning.message)
        if issubclass(
            warning.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
        ):
            continue
        if any(advice in message for advice in ADVISORY_WARNINGS):
            continue
        raise _fail(name, f"its env fails gymnasium's check_env: {message}")


def _check_close(env: gym.Env, name: str) -> None:
    try:
        env.close()
        env.close()
    except Exception as error:
        raise _fail(
            name, f"closing its env twice raised {type(error).__name__}: {error}"
        ) from error


def _outside(space: gym.spaces.Space, observation: Any) -> str | None:
    """Why `observation` is not in `space` (None if it is)."""
    if isinstance(space, gym.spaces.Box):
        array = np.asarray(observation)
        if array.shape != space.shape:
            return f"of shape {array.shape}, not the observation space's {space.shape}"
        if not np.can_cast(array.dtype, space.dtype):
            return f"of dtype {array.dtype}, not the observation space's {space.dtype}"
        if not space.contains(array):
            where = (array < space.low) | (array > space.high) | np.isnan(array)
            return (
                f"outside the observation space {space} (values {array[where].ravel()[:4]} "
                "out of bounds)"
            )
        return None
    return None if space.contains(observation) else f"outside the observation space {space}"


def _equal(a: Any, b: Any) -> bool:
    """Equality of observations and infos: arrays by value (NaN equal), dicts and sequences by
    their items, anything else by ==."""
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_equal(a[key], b[key]) for key in a)
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    try:
        x, y = np.asarray(a), np.asarray(b)
        if x.dtype.kind in "biufc" and y.dtype.kind in "biufc":
            return x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))
        return bool(a == b)
    except Exception:  # objects that cannot be compared are taken as different
        return False


@dataclasses.dataclass
class _Episode:
    observations: list[Any]
    rewards: list[float]
    ends: list[tuple[bool, bool]]
    infos: list[Any]

    def same(self, other: _Episode, with_info: bool = False) -> bool:
        return (
            self.rewards == other.rewards
            and self.ends == other.ends
            and _equal(self.observations, other.observations)
            and (not with_info or _equal(self.infos, other.infos))
        )


class _Probe:
    """Runs whole episodes of one env with the actions the sampler would send."""

    def __init__(self, env: gym.Env, name: str, seed: int, horizon: int) -> None:
        self.env, self.name, self.seed, self.horizon = env, name, seed, horizon
        self.observation_space, self.action_space = env.observation_space, env.action_space

    def fail(self, message: str) -> TaskFamilyError:
        return _fail(self.name, message)

    def check_spaces(self, tasks: list[Task]) -> None:
        """Action space Box or Discrete; the same spaces after a reset with every task."""
        space = self.action_space
        if not isinstance(space, gym.spaces.Box | gym.spaces.Discrete):
            raise self.fail(
                f"action space {space} is not supported: the policies act in a Box (Gaussian) "
                "or a Discrete (categorical) space"
            )
        for task in tasks:
            try:
                self.env.reset(seed=self.seed, options={"task": task})
            except Exception as error:
                raise self.fail(
                    f"reset(options={{'task': {task!r}}}) raised {type(error).__name__}: {error}"
                ) from error
            self.same_spaces(task)

    def same_spaces(self, task: Task | None) -> None:
        for kind, before, now in (
            ("action", self.action_space, self.env.action_space),
            ("observation", self.observation_space, self.env.observation_space),
        ):
            if now != before:
                raise self.fail(
                    f"the {kind} space depends on the task: {before} when made, {now} after "
                    f"reset with task {task!r}; every task must share the env's spaces"
                )

    def action_sequences(self, action_std: float) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        space, size = self.action_space, (NUM_ACTION_SEQUENCES, self.horizon)
        if isinstance(space, gym.spaces.Discrete):
            draws = rng.integers(0, int(space.n), size=size)  # the categorical policy's indices
        else:
            draws = rng.normal(0.0, action_std, size=(*size, *space.shape)).astype(np.float32)
        return [env_actions(sequence, space) for sequence in draws]

    def episode(self, actions: np.ndarray, task: Task | None) -> _Episode:
        """One whole episode: reset (with `task`, or without options when None), then steps."""
        options = None if task is None else {"task": task}
        observation, info = self.env.reset(seed=self.seed, options=options)
        self.same_spaces(task)
        episode = _Episode([_snapshot(observation)], [], [], [_snapshot(info)])
        for t, action in enumerate(actions):
            action = action.item() if isinstance(self.action_space, gym.spaces.Discrete) else action
            try:
                observation, reward, terminated, truncated, info = self.env.step(action)
            except Exception as error:
                raise self.fail(
                    f"step {t + 1} of an episode raised {type(error).__name__}: {error} for the "
                    f"action {action!r} (the sampler sends such actions: Box ones clipped to "
                    "the box, Discrete ones in start .. start + n - 1)"
                ) from error
            self.same_spaces(task)
            why = _outside(self.observation_space, observation)
            if why is not None:
                raise self.fail(f"step {t + 1} of an episode returned an observation {why}")
            if not np.isfinite(float(reward)):
                raise self.fail(f"step {t + 1} of an episode returned the reward {reward}")
            episode.observations.append(_snapshot(observation))
            episode.rewards.append(float(reward))
            episode.ends.append((bool(terminated), bool(truncated)))
            episode.infos.append(_snapshot(info))
            if terminated or truncated:
                return episode
        after = (
            ""
            if task is not None
            else " after reset() without options (is its step counter reset?)"
        )
        raise self.fail(
            f"an episode did not end within {self.horizon} steps (max_episode_steps){after}"
        )

    def check_episodes(self, tasks: list[Task], action_std: float) -> None:
        before = [pickle.dumps(task) for task in tasks]
        sequences = self.action_sequences(action_std)
        first = self.episode(sequences[0], tasks[0])
        if not first.same(self.episode(sequences[0], tasks[0])):
            raise self.fail(f"two episodes with the same seed {self.seed}, task and actions differ")
        pair = self.two_that_differ(tasks, sequences)
        if pair is None:
            raise self.fail(
                f"tasks {tasks[0]!r}, {tasks[1]!r}, ... ({len(tasks)}) give the same rewards, "
                f"observations, episode ends and info for the same actions over whole episodes "
                f"({NUM_ACTION_SEQUENCES} action sequences); does the env read its task from "
                "reset(options={'task': task})?"
            )
        for task, sequence, expected in pair:
            self.episode(sequence, task)  # ends the episode of `task` ...
            if not self.episode(sequence, None).same(expected):  # ... then an autoreset
                raise self.fail(
                    f"task {task!r} does not survive an autoreset: after its episode ended, "
                    "reset() without options ran a different task"
                )
        for task, pickled in zip(tasks, before, strict=True):
            if pickle.loads(pickled) != task:
                raise self.fail(
                    f"the env changed task {pickle.loads(pickled)!r} into {task!r} during "
                    "its episodes; an env must not modify its task"
                )

    def two_that_differ(
        self, tasks: list[Task], sequences: list[np.ndarray]
    ) -> list[tuple[Task, np.ndarray, _Episode]] | None:
        """Two tasks and their episodes that differ for one action sequence, if any."""
        for sequence in sequences:
            reference = self.episode(sequence, tasks[0])
            for task in tasks[1:]:
                episode = self.episode(sequence, task)
                if not episode.same(reference, with_info=True):
                    return [(tasks[0], sequence, reference), (task, sequence, episode)]
        return None


def _snapshot(value: Any) -> Any:
    """A copy of an observation or info that later steps cannot change."""
    try:
        return pickle.loads(pickle.dumps(value))
    except Exception:
        return value
