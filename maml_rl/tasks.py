"""The task-family protocol, the batch-environment protocol and the family registry.

A task family is three things (see docs/task-families.md, "Add your own task family"):

* a frozen dataclass describing one task (a goal, a target velocity, ...);
* ``sample_tasks(n, rng)`` drawing n tasks with an explicit ``numpy.random.Generator``;
* ``make_env()`` returning a Gymnasium environment that takes its task through
  ``reset(options={"task": task})`` (a reset without a task keeps the current one).

A family may also provide ``make_batch_env(num_envs)``: a natively vectorized `BatchEnv`
that steps many environments, each with its own task, as array code (optionally taking a
``stepper`` keyword, as the MuJoCo families do; see `maml_rl.vector` for the backends).
Families are looked up by name from the ``maml_rl.task_families`` entry-point group, or by a
``module:Class`` path.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from maml_rl import imports
from maml_rl.errors import TaskFamilyError

ENTRY_POINT_GROUP = "maml_rl.task_families"

Task = Any
"""A task: an instance of the family's frozen dataclass."""


@runtime_checkable
class BatchEnv(Protocol):
    """`num_envs` environments stepped in lock-step, each with its own task.

    ``reset(tasks, seed)`` starts one episode in every environment (``len(tasks) == num_envs``)
    and returns observations [num_envs, obs_dim]. ``step(actions [num_envs, act_dim])`` returns
    ``(observations, rewards, terminated, truncated)`` with shapes [num_envs, obs_dim],
    [num_envs], [num_envs], [num_envs]. Environments whose episode has ended may be stepped
    further; the sampler masks those steps out, so their values do not matter. Episodes are
    truncated after ``max_episode_steps`` steps. One with a ``device`` attribute that is not
    None (the MuJoCo Warp backend) takes and returns torch tensors on that device instead.
    """

    num_envs: int
    observation_space: gym.spaces.Space
    action_space: gym.spaces.Space
    max_episode_steps: int

    def reset(self, tasks: Sequence[Task], seed: int | None = None) -> np.ndarray: ...

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class TaskFamily(Protocol):
    """A distribution over tasks and the environment that runs them."""

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]: ...

    def make_env(self) -> gym.Env: ...


def available_families() -> dict[str, str]:
    """Registered family names -> 'module:Class' targets, from the entry points."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _import_target(target: str) -> Any:
    try:
        return imports.import_target(target, "task family")
    except imports.ImportTargetError as error:
        raise TaskFamilyError(str(error)) from error


def import_root(name: str) -> str | None:
    """For a 'module:Class' family (not a registered name), the directory that must be on
    sys.path to import it again (where the module was found), else None. Run directories
    record it (`train`), so `evaluate`, `render` and `--resume` work from any directory."""
    if name in available_families() or ":" not in name:
        return None
    return imports.import_root(name)


add_import_root = imports.add_import_root


def resolve_family_class(name: str) -> Any:
    """The family class (or factory) for a registered name or a 'module:Class' path."""
    registered = available_families()
    if name in registered:
        return _import_target(registered[name])
    if ":" in name:
        return _import_target(name)
    known = ", ".join(sorted(registered)) or "none (is maml_rl installed with pip install -e .?)"
    raise TaskFamilyError(f"unknown task family '{name}'; registered families: {known}")


def make_family(name: str, env_kwargs: dict[str, Any] | None = None) -> TaskFamily:
    """Instantiate a task family by name with its keyword arguments."""
    factory = resolve_family_class(name)
    kwargs = dict(env_kwargs or {})
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        raise TaskFamilyError(f"bad env_kwargs for task family '{name}': {error}") from error
    except ValueError:  # builtins without a signature: let the call decide
        pass
    try:
        family = factory(**kwargs)
    except TaskFamilyError:
        raise
    except (TypeError, ValueError) as error:  # the family rejected its arguments
        message = re.sub(r"^[\w.]+\(\) ", "", " ".join(str(error).split()))
        raise TaskFamilyError(f"bad env_kwargs for task family '{name}': {message}") from error
    missing = [m for m in ("sample_tasks", "make_env") if not callable(getattr(family, m, None))]
    if missing:
        raise TaskFamilyError(f"task family '{name}' lacks {', '.join(missing)}()")
    return family


def check_count(name: str, value: object, limit: int = 10**6) -> None:
    """For task families' constructors: reject a count that is not an integer in [1, limit]
    (``2.5``, ``0``, ``-1``, the string ``'1e9'``) with a one-line ValueError naming it."""
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not is_int or not 1 <= value <= limit:  # type: ignore[operator]
        raise ValueError(f"{name} must be an integer in [1, {limit:,}], got {value!r}")
