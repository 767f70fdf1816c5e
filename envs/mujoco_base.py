"""What the MuJoCo task families share: task dataclasses, the task wrapper, the family base.

A MuJoCo family runs one of Gymnasium's v5 locomotion environments unchanged (physics,
observation, reset noise, ``reset(seed=...)`` handling, the cost terms in ``info``), configured
through ``gymnasium.make`` keyword arguments, and wraps it in `MujocoTaskEnv`, which

* takes its task through ``reset(options={"task": task})`` (a reset without one keeps it);
* maps the policy's action to the robot: ``a_env = clip(a_policy / action_scale, -1, 1)``
  (pytorch-maml-rl's and ProMP's normalised action wrapper with scale 10: a Gaussian policy
  with std 1 acts like std 0.1 in torque space; the control cost is paid on ``a_env``);
* replaces Gymnasium's reward by the family's ``reward(task, info)``, a pure function of the
  task and the step's ``info`` terms (``x_velocity``, ``reward_ctrl``, ``reward_contact``, ...).

Episodes are truncated after ``max_episode_steps`` by Gymnasium's ``TimeLimit``.

``reward(task, info)`` is array code: given one task and one step's ``info`` it returns a
scalar; given ``stack_tasks`` of B tasks and ``info`` arrays [B] it returns the rewards [B].
`MujocoFamily.make_batch_env` runs B environments natively (`envs.mujoco_batch`) with the
same reward function and trajectories identical to B of these Gymnasium environments; with
``stepper="warp"`` it runs them as one MuJoCo Warp batch on a torch device (`envs.warp_batch`),
through the same observation, reward and health code, written once on arrays that are numpy's
for the C steppers and torch tensors for Warp (`envs.mujoco_batch.array_namespace`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium as gym
import mujoco
import numpy as np

from maml_rl.tasks import Task, check_count

from .mujoco_batch import MujocoBatchEnv, Simulations, box_space, mujoco_env


@dataclass(frozen=True)
class VelocityTask:
    """Run forward at a target velocity (m/s)."""

    velocity: float


@dataclass(frozen=True)
class DirectionTask:
    """Run forward (+1) or backward (-1)."""

    direction: int


@dataclass(frozen=True)
class GoalTask:
    """Reach a goal position (x, y) in the plane."""

    goal: tuple[float, float]


@contextmanager
def _quiet_settotalmass() -> Iterator[None]:
    """Silence MuJoCo 4's deprecation notice for ``settotalmass`` in Gymnasium's
    half_cheetah.xml, printed once per environment built (hundreds per run). Other MuJoCo
    warnings raised while building become Python warnings."""
    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class MujocoTaskEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A Gymnasium MuJoCo environment that runs one task of `family` at a time.

    Its constructor arguments are recorded, so ``env.spec.make()`` rebuilds it.
    """

    def __init__(self, env: gym.Env, family: MujocoFamily, task: Task) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, family=family, task=task)
        super().__init__(env)
        self.family, self.task = family, task
        self.action_space = family.action_space
        box = box_space(env.action_space, "actions")
        self._low = np.asarray(box.low, dtype=np.float32)
        self._high = np.asarray(box.high, dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if options and "task" in options:
            self.task = options["task"]
        observation, info = self.env.reset(seed=seed)
        return observation, {**info, "task": self.task}

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        scaled = np.asarray(action, dtype=np.float32) / self.family.action_scale
        observation, _, terminated, truncated, info = self.env.step(
            np.clip(scaled, self._low, self._high)
        )
        reward = float(self.family.reward(self.task, info))
        return observation, reward, terminated, truncated, info


class MujocoFamily:
    """Base of the MuJoCo families: builds the Gymnasium env and the policy-side spaces.

    Subclasses set `env_id`, pass their ``gymnasium.make`` keyword arguments to `__init__`, and
    define ``sample_tasks``, ``oracle_features``, ``reward(task, info)`` and `default_task`;
    per robot, the batched counterparts of the Gymnasium env's observation and ``info`` terms
    used by `make_batch_env` (``batch_position``, ``batch_observation``, ``batch_step_info``,
    ``contact_forces``; see `envs.mujoco_batch`).
    """

    env_id: str
    default_task: Task
    contact_forces: bool = False
    """Whether the batched terms read ``cfrc_ext`` (filled by ``mj_rnePostConstraint``)."""
    warp_stepper: bool = True
    """Whether `make_batch_env` offers ``stepper="warp"`` (``sampler: warp``)."""

    def __init__(
        self, max_episode_steps: int, action_scale: float, make_kwargs: Mapping[str, Any]
    ) -> None:
        check_count("max_episode_steps", max_episode_steps)
        if "frame_skip" in make_kwargs:
            check_count("frame_skip", make_kwargs["frame_skip"])
        if not (isinstance(action_scale, int | float) and math.isfinite(action_scale)) or not (
            action_scale > 0
        ):
            raise ValueError(f"action_scale must be a number > 0, got {action_scale!r}")
        self.max_episode_steps = int(max_episode_steps)
        self.action_scale = float(action_scale)
        self.make_kwargs = dict(make_kwargs)
        probe = self.make_gym_env()
        self.observation_space = box_space(probe.observation_space, "observations")
        box = box_space(probe.action_space, "actions")
        self.action_space = gym.spaces.Box(
            box.low * self.action_scale, box.high * self.action_scale, dtype=np.float32
        )
        self.dt = float(mujoco_env(probe).dt)
        probe.close()

    def make_gym_env(self) -> gym.Env:
        """Gymnasium's environment alone: its own reward, no task."""
        with _quiet_settotalmass():
            return gym.make(
                self.env_id, max_episode_steps=self.max_episode_steps, **self.make_kwargs
            )

    def make_env(self) -> MujocoTaskEnv:
        return MujocoTaskEnv(self.make_gym_env(), self, self.default_task)

    def make_batch_env(
        self,
        num_envs: int,
        stepper: str = "auto",
        num_threads: int | None = None,
        device: Any = None,
    ) -> MujocoBatchEnv:
        """`num_envs` environments stepped natively, identical to `make_env`'s for one seed.

        stepper: "batch" (``mujoco.batch.Batch``), "threads" (a thread pool over MjData),
        "auto" (the faster of those for this family) or "warp" (MuJoCo Warp on the torch
        `device`, default cpu; float32, torch tensors in and out); num_threads: default all
        CPUs of this process.
        """
        return MujocoBatchEnv(self, num_envs, stepper, num_threads, device)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        raise NotImplementedError

    def reward(self, task: Any, info: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    # per robot, for `make_batch_env`: the Gymnasium env's observation and info terms for B
    # simulations, as array code for numpy arrays (C steppers) and torch tensors (Warp) alike

    def batch_position(self, sim: Simulations) -> Any:
        """The position [B, ...] that a step's velocity is measured from."""
        raise NotImplementedError

    def batch_observation(self, sim: Simulations) -> Any:
        """The Gymnasium env's observations [B, obs_dim]."""
        raise NotImplementedError

    def batch_step_info(
        self, sim: Simulations, before: Any, action: Any
    ) -> tuple[dict[str, Any], Any]:
        """The info terms [B] after a step from `batch_position` = before with robot actions
        [B, act_dim], and terminated [B]."""
        raise NotImplementedError

    def _protocol(self) -> str:
        return (
            f"H={self.max_episode_steps}, dt={self.dt:g}, "
            f"a = clip(output/{self.action_scale:g}, -1, 1)"
        )


def check_range(name: str, low: float, high: float) -> None:
    """Reject an empty or non-finite task range with a one-line message."""
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"{name} needs finite low <= high, got [{low}, {high}]")


def sample_velocities(
    n: int, low: float, high: float, rng: np.random.Generator
) -> list[VelocityTask]:
    """n target velocities ~ U[low, high]."""
    return [VelocityTask(velocity=float(v)) for v in rng.uniform(low, high, size=n)]


def sample_directions(n: int, rng: np.random.Generator) -> list[DirectionTask]:
    """n directions in {-1, +1}, each with probability 1/2."""
    return [DirectionTask(direction=int(d)) for d in 2 * rng.integers(0, 2, size=n) - 1]
