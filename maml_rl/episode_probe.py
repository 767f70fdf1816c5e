"""Whole episodes of one environment, run the way the sampler runs them (`checker.py`'s rules
4-6): the actions it sends (`maml_rl.actions.env_actions` of Gaussian or uniform categorical
samples), every observation checked against the space, every reward for finiteness, every
episode for its end; episodes compared by rewards, observations, ends and ``info``.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from maml_rl.actions import action_shape, env_actions
from maml_rl.tasks import Task, TaskFamilyError

NUM_ACTION_SEQUENCES = 3


def outside(space: gym.spaces.Space, observation: Any) -> str | None:
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
class Episode:
    observations: list[Any]
    rewards: list[float]
    ends: list[tuple[bool, bool]]
    infos: list[Any]

    def same(self, other: Episode, with_info: bool = False) -> bool:
        return (
            self.rewards == other.rewards
            and self.ends == other.ends
            and _equal(self.observations, other.observations)
            and (not with_info or _equal(self.infos, other.infos))
        )


class Probe:
    """Runs whole episodes of one env with the actions the sampler would send."""

    def __init__(
        self, env: gym.Env, fail: Callable[[str], TaskFamilyError], seed: int, horizon: int
    ) -> None:
        """fail: the one-line error naming the family for a message."""
        self.env, self.fail, self.seed, self.horizon = env, fail, seed, horizon
        self.observation_space, self.action_space = env.observation_space, env.action_space

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
            shape = (*size, *action_shape(space))
            draws = rng.normal(0.0, action_std, size=shape).astype(np.float32)
        return [env_actions(sequence, space) for sequence in draws]

    def episode(self, actions: np.ndarray, task: Task | None) -> Episode:
        """One whole episode: reset (with `task`, or without options when None), then steps."""
        options = None if task is None else {"task": task}
        observation, info = self.env.reset(seed=self.seed, options=options)
        self.same_spaces(task)
        episode = Episode([_snapshot(observation)], [], [], [_snapshot(info)])
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
            why = outside(self.observation_space, observation)
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
    ) -> list[tuple[Task, np.ndarray, Episode]] | None:
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
