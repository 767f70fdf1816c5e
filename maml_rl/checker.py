"""Check a task family before training: `check_family` names the first violation in one line.

The rules, in the order they are checked (README, "Add your own task family"):

1. ``sample_tasks(n, rng)`` returns n instances of frozen dataclasses, the same list for the
   same seed and another for another seed, and tasks survive pickling (they cross process
   boundaries and checkpoints);
2. the family has ``max_episode_steps``, an int >= 1 (or its own ``make_batch_env``);
3. ``make_env()`` returns a ``gymnasium.Env`` that passes Gymnasium's ``check_env`` (render
   checks skipped; closing is checked on the env itself, not on one rebuilt from its spec);
4. episodes are deterministic: the same seed, task and actions give the same observations
   and rewards; observations stay in the observation space and rewards are finite;
5. two different tasks give different rewards for the same actions from the same seed
   (otherwise the env ignores ``reset(options={"task": task})``);
6. episodes end within ``max_episode_steps``, and the task survives an autoreset: after an
   episode with task A ends, ``reset()`` without options runs task A again;
7. the env can be closed twice.

The family object itself need not be picklable (the sampler builds its environments in this
process); if it is not, a `FamilyCheckWarning` says so, since process-based vector envs and
``spawn`` need it.
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

from maml_rl.tasks import Task, TaskFamily, TaskFamilyError

NUM_TASKS = 8
ROLLOUT_STEPS = 5
MAX_EPISODE_STEPS_CHECKED = 1000

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


def check_family(family: TaskFamily, seed: int = 0) -> None:
    """Raise `TaskFamilyError` naming the first rule `family` breaks; return None if it passes."""
    name = type(family).__name__
    tasks = _check_tasks(family, name, seed)
    _check_horizon(family, name)
    try:
        pickle.dumps(family)
    except Exception as error:
        warnings.warn(
            f"{name}: the family object is not picklable ({one_line(error, 120)}); "
            "process-based vector environments will not work",
            FamilyCheckWarning,
            stacklevel=2,
        )
    task_a, task_b = _two_different(tasks, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = _make_env(family, name)
        try:
            _check_with_gymnasium(env, task_a, name, seed, caught)
            _check_task_behaviour(env, family, task_a, task_b, name, seed)
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
    if list(first) != list(second):
        raise _fail(name, f"sample_tasks is not deterministic: two draws with seed {seed} differ")
    other = family.sample_tasks(NUM_TASKS, np.random.default_rng(seed + 1))
    if list(other) == list(first):
        raise _fail(
            name,
            f"sample_tasks ignores its rng: seeds {seed} and {seed + 1} give the same tasks "
            "(draw them from the numpy Generator it is given)",
        )
    for task in first:
        try:
            restored = pickle.loads(pickle.dumps(task))
        except Exception as error:
            raise _fail(name, f"task {task!r} is not picklable: {error}") from error
        if restored != task:
            raise _fail(
                name,
                f"task {task!r} does not survive pickling (got {restored!r}): a field that "
                "compares by identity (a function, a lambda, an object without __eq__)?",
            )
    return list(first)


def _check_horizon(family: TaskFamily, name: str) -> None:
    horizon = getattr(family, "max_episode_steps", None)
    if horizon is None:
        if not callable(getattr(family, "make_batch_env", None)):
            raise _fail(name, "defines no max_episode_steps (the sampler's horizon)")
    elif isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise _fail(name, f"max_episode_steps must be a positive int, got {horizon!r}")


def _two_different(tasks: list[Task], name: str) -> tuple[Task, Task]:
    for other in tasks[1:]:
        if other != tasks[0]:
            return tasks[0], other
    raise _fail(name, f"sample_tasks drew {NUM_TASKS} identical tasks; a family needs variety")


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


def _rollout(
    env: gym.Env, actions: list[Any], seed: int, options: dict[str, Any] | None, name: str
) -> tuple[list[np.ndarray], list[float]]:
    observation, _ = env.reset(seed=seed, options=options)
    observations, rewards = [np.array(observation, copy=True)], []
    for t, action in enumerate(actions):
        observation, reward, terminated, truncated, _ = env.step(action)
        if not env.observation_space.contains(
            np.asarray(observation, dtype=env.observation_space.dtype)
        ):
            raise _fail(
                name,
                f"step {t} returned an observation outside the observation space "
                f"{env.observation_space} (first values {np.asarray(observation).ravel()[:4]})",
            )
        if not np.isfinite(float(reward)):
            raise _fail(name, f"step {t} returned the reward {reward}")
        observations.append(np.array(observation, copy=True))
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return observations, rewards


def _same(a: tuple[list[np.ndarray], list[float]], b: tuple[list[np.ndarray], list[float]]) -> bool:
    return (
        len(a[0]) == len(b[0])
        and all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
        and a[1] == b[1]
    )


def _run_to_episode_end(env: gym.Env, family: TaskFamily, task: Task, name: str, seed: int) -> None:
    horizon = getattr(family, "max_episode_steps", None)
    limit = MAX_EPISODE_STEPS_CHECKED if horizon is None else int(horizon)
    env.reset(seed=seed, options={"task": task})
    for _ in range(limit):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            return
    raise _fail(name, f"an episode did not end within {limit} steps (max_episode_steps)")


def _check_task_behaviour(
    env: gym.Env, family: TaskFamily, task_a: Task, task_b: Task, name: str, seed: int
) -> None:
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(ROLLOUT_STEPS)]
    with_a = _rollout(env, actions, seed, {"task": task_a}, name)
    if not _same(with_a, _rollout(env, actions, seed, {"task": task_a}, name)):
        raise _fail(name, f"two episodes with the same seed {seed}, task and actions differ")
    with_b = _rollout(env, actions, seed, {"task": task_b}, name)
    if with_a[1] == with_b[1]:
        raise _fail(
            name,
            f"tasks {task_a!r} and {task_b!r} give the same rewards for the same actions; "
            "does the env read its task from reset(options={'task': task})?",
        )
    for task, expected in ((task_a, with_a), (task_b, with_b)):
        _run_to_episode_end(env, family, task, name, seed)
        if not _same(_rollout(env, actions, seed, None, name), expected):
            raise _fail(
                name,
                f"task {task!r} does not survive an autoreset: after its episode ended, "
                "reset() without options ran a different task",
            )
