"""Observations of any shape: images, Dicts. Stored flat, handed to the policy in their shape.

The sampler, the batches, the baseline and the optimisation all work on flat observations
[*, D]. A family whose observation space is not a flat Box (an image ``Box(0, 255, (8, 8, 1),
uint8)``, a ``Dict``) is seen through `FlatObservationFamily`: each of its environments is
wrapped in Gymnasium's ``FlattenObservation``, so every sampler backend (sync, async, procs,
ray, a family's own batch env) steps flat observations, D = ``gym.spaces.flatdim(space)``.
`unflatten` inverts ``gym.spaces.flatten`` on torch tensors, differentiably and on any device,
so a custom policy receives what its space describes:

    Box(shape)        -> tensor [B, *shape] (floating, in the run's dtype; values as the env
                         gave them, e.g. 0..255 for uint8 images)
    Discrete(n)       -> one-hot tensor [B, n]
    MultiBinary(n)    -> tensor [B, n]
    Dict(k: space)    -> dict k -> the above, in the Dict's key order (nested Dicts nest)

`supported(space)` says whether a space can be flattened and restored this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from torch import Tensor

from maml_rl.tasks import Task, TaskFamily, TaskFamilyError

Observation = Tensor | dict[str, Any]
"""What a policy receives: a tensor [B, *shape] or a (nested) dict of them."""


def is_flat(space: gym.spaces.Space) -> bool:
    """Whether `space` is a flat Box [D] (observations need no flattening)."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 1


def unsupported_part(space: gym.spaces.Space) -> gym.spaces.Space | None:
    """The first (sub)space `unflatten` cannot restore, or None if all of `space` is fine."""
    if isinstance(space, gym.spaces.Box | gym.spaces.Discrete | gym.spaces.MultiBinary):
        return None
    if isinstance(space, gym.spaces.Dict):
        for sub in space.spaces.values():
            bad = unsupported_part(sub)
            if bad is not None:
                return bad
        return None
    return space


def describe(space: gym.spaces.Space) -> str:
    """A short name of an observation space for messages (e.g. ``Box(8, 8, 1) uint8``)."""
    if isinstance(space, gym.spaces.Box):
        return f"Box{tuple(space.shape)} {space.dtype}"
    if isinstance(space, gym.spaces.Dict):
        return "Dict(" + ", ".join(f"{k}: {describe(s)}" for k, s in space.spaces.items()) + ")"
    return repr(space)


def unflatten(space: gym.spaces.Space, flat: Tensor) -> Observation:
    """flat [B, D] (D = gym.spaces.flatdim(space)) -> the observation as `space` shapes it
    (module docstring); the inverse of ``gym.spaces.flatten`` row by row, as views/slices."""
    if isinstance(space, gym.spaces.Box):
        return flat.reshape(flat.shape[0], *space.shape)
    if isinstance(space, gym.spaces.Discrete | gym.spaces.MultiBinary):
        return flat
    if isinstance(space, gym.spaces.Dict):
        out: dict[str, Any] = {}
        start = 0
        for key, sub in space.spaces.items():
            size = gym.spaces.flatdim(sub)
            out[key] = unflatten(sub, flat[:, start : start + size])
            start += size
        return out
    raise TaskFamilyError(f"observation space {space} cannot be passed to a policy")


class FlatObservationFamily:
    """A task family whose environments' observations are flattened (see the module doc).

    Everything else (tasks, horizon, oracle features, success, preferred backend) is the
    wrapped family's; a native batch env is used when the family has one and the observation
    space is a Box (its rows are reshaped), otherwise a Gymnasium backend.
    """

    def __init__(self, family: TaskFamily, observation_space: gym.spaces.Space) -> None:
        bad = unsupported_part(observation_space)
        if bad is not None:
            raise TaskFamilyError(
                f"task family {family!r}: observation space {bad} is not supported "
                "(Box of any shape, Discrete, MultiBinary and Dicts of them are)"
            )
        self.family, self.observation_space = family, observation_space
        self.max_episode_steps = getattr(family, "max_episode_steps", None)
        self.reports_success = bool(getattr(family, "reports_success", False))
        preferred = getattr(family, "sampler_backend", None)
        if preferred is not None:
            self.sampler_backend = preferred
        if isinstance(observation_space, gym.spaces.Box) and callable(
            getattr(family, "make_batch_env", None)
        ):
            self.make_batch_env = self._make_batch_env

    def __repr__(self) -> str:
        return repr(self.family)

    def __getattr__(self, name: str) -> Any:  # oracle_features, render hooks, ...
        if name in ("family", "make_batch_env"):  # unset yet (unpickling), or not flat
            raise AttributeError(name)
        return getattr(self.family, name)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        return self.family.sample_tasks(n, rng)

    def make_env(self) -> gym.Env:
        return gym.wrappers.FlattenObservation(self.family.make_env())

    def _make_batch_env(self, num_envs: int, **kwargs: Any) -> _FlatBatchEnv:
        return _FlatBatchEnv(self.family.make_batch_env(num_envs, **kwargs))  # type: ignore[attr-defined]


class _FlatBatchEnv:
    """A family's native batch env of Box observations [B, *shape], seen as [B, D]."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.num_envs, self.max_episode_steps = env.num_envs, env.max_episode_steps
        self.action_space = env.action_space
        self.observation_space = gym.spaces.flatten_space(env.observation_space)
        if hasattr(env, "success"):
            self.success = env.success

    def reset(self, tasks: Sequence[Task], seed: int | None = None) -> np.ndarray:
        obs = np.asarray(self.env.reset(tasks, seed))
        return obs.reshape(obs.shape[0], -1)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        obs, reward, terminated, truncated = self.env.step(actions)
        obs = np.asarray(obs)
        if hasattr(self.env, "success"):
            self.success = self.env.success
        return obs.reshape(obs.shape[0], -1), reward, terminated, truncated

    def close(self) -> None:
        self.env.close()
