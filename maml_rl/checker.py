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
4. whole episodes (`maml_rl.episode_probe`), with the actions the sampler sends
   (`maml_rl.actions.env_actions` of Gaussian or uniform categorical samples), are
   deterministic given seed, task and actions;
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

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from maml_rl.episode_probe import Probe
from maml_rl.tasks import Task, TaskFamily, TaskFamilyError

NUM_TASKS = 8
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
            probe = Probe(env, lambda message: _fail(name, message), seed, horizon)
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
        env.action_space.seed(seed)  # check_env steps random actions: the same verdict each run
        env.observation_space.seed(seed)
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
