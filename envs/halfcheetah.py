"""Half-cheetah velocity and direction (Finn et al. 2017, Sec. 5.3) on Gymnasium's HalfCheetah-v5.

Physics, observation (17 numbers: joint positions without x, and velocities), reset noise and
the control cost are Gymnasium's; dt = 0.05 (frame_skip 5). With v_x = ``info["x_velocity"]``
and a the action sent to the robot (policy output / action_scale, clipped to [-1, 1]):

* ``halfcheetah-vel``: v_goal ~ U[0, 2] (ProMP: U[0, 3]),  r = -|v_x - v_goal| - 0.05‖a‖²
* ``halfcheetah-dir``: dir ∈ {-1, +1} with p = 1/2,         r = dir · v_x - 0.05‖a‖²

where -0.05‖a‖² is ``info["reward_ctrl"]`` (``ctrl_cost_weight=0.05``). Episodes never
terminate and are truncated after ``max_episode_steps`` (100: pytorch-maml-rl/ProMP; the paper
used 200 steps of rllab's cheetah with dt 0.01, i.e. ``frame_skip=1``, ``action_scale=1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from .mujoco_base import (
    DirectionTask,
    MujocoFamily,
    VelocityTask,
    check_range,
    sample_directions,
    sample_velocities,
)
from .mujoco_batch import Simulations, array_namespace, control_reward, copied

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; not run


class HalfCheetahOptions(TypedDict, total=False):
    """The robot, cost and protocol arguments every half-cheetah family takes."""

    max_episode_steps: int
    action_scale: float
    ctrl_cost_weight: float
    frame_skip: int
    reset_noise_scale: float


class HalfCheetahFamily(MujocoFamily):
    """HalfCheetah-v5 with a task-dependent forward reward; subclasses define the task and take
    the robot's arguments (`HalfCheetahOptions`, defaults here: pytorch-maml-rl/ProMP) by
    keyword."""

    env_id = "HalfCheetah-v5"

    def __init__(
        self,
        *,
        max_episode_steps: int = 100,
        action_scale: float = 10.0,
        ctrl_cost_weight: float = 0.05,
        frame_skip: int = 5,
        reset_noise_scale: float = 0.1,
    ) -> None:
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        super().__init__(
            max_episode_steps,
            action_scale,
            {
                "ctrl_cost_weight": self.ctrl_cost_weight,
                "frame_skip": frame_skip,
                "reset_noise_scale": float(reset_noise_scale),
            },
        )

    # HalfCheetah-v5's observation and info terms for B simulations (see envs.mujoco_batch):
    # array code for numpy arrays (C steppers) and torch tensors (Warp stepper) alike

    def batch_position(self, sim: Simulations) -> Any:
        """The x position [B] that x_velocity is measured from."""
        return copied(sim.qpos[:, 0])

    def batch_observation(self, sim: Simulations) -> Any:
        """[B, 17]: qpos without x, then qvel."""
        return array_namespace(sim.qpos).concatenate([sim.qpos[:, 1:], sim.qvel], axis=1)

    def batch_step_info(
        self, sim: Simulations, before: Any, action: Any
    ) -> tuple[dict[str, Any], Any]:
        """Info terms [B] after a step from x = before with robot actions [B, 6]; never ends."""
        x = copied(sim.qpos[:, 0])
        info = {
            "x_position": x,
            "x_velocity": (x - before) / self.dt,
            "reward_ctrl": control_reward(action, self.ctrl_cost_weight),
        }
        return info, array_namespace(x).zeros_like(x, dtype=bool)


class HalfCheetahVel(HalfCheetahFamily):
    """Run at a target velocity: r = -|v_x - v_goal| - ctrl_cost_weight·‖a‖².

    v_goal ~ U[low, high].
    """

    default_task = VelocityTask(velocity=1.0)

    def __init__(
        self,
        low: float = 0.0,
        high: float = 2.0,
        **options: Unpack[HalfCheetahOptions],
    ) -> None:
        check_range("halfcheetah-vel velocity", low, high)
        self.low, self.high = float(low), float(high)
        super().__init__(**options)

    def __repr__(self) -> str:
        return (
            f"HalfCheetahVel(v_goal ~ U[{self.low:g}, {self.high:g}], "
            f"r = -|v_x - v_goal| - {self.ctrl_cost_weight:g}‖a‖², {self._protocol()})"
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        return sample_velocities(n, self.low, self.high, rng)

    def oracle_features(self, task: VelocityTask) -> np.ndarray:
        return np.array([task.velocity], dtype=np.float32)

    def reward(self, task: VelocityTask, info: Mapping[str, Any]) -> Any:
        """r = -|v_x - v_goal| + info["reward_ctrl"]; scalars, or arrays [B] (`stack_tasks`)."""
        return -abs(info["x_velocity"] - task.velocity) + info["reward_ctrl"]


class HalfCheetahDir(HalfCheetahFamily):
    """Run forward or backward: r = dir · v_x - ctrl_cost_weight·‖a‖², dir ∈ {-1, +1}."""

    default_task = DirectionTask(direction=1)

    def __repr__(self) -> str:
        return (
            "HalfCheetahDir(dir ∈ {-1, +1}, p = 1/2, "
            f"r = dir·v_x - {self.ctrl_cost_weight:g}‖a‖², {self._protocol()})"
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[DirectionTask]:
        return sample_directions(n, rng)

    def oracle_features(self, task: DirectionTask) -> np.ndarray:
        return np.array([task.direction], dtype=np.float32)

    def reward(self, task: DirectionTask, info: Mapping[str, Any]) -> Any:
        """r = dir · v_x + info["reward_ctrl"]; scalars, or arrays [B] (`stack_tasks`)."""
        return task.direction * info["x_velocity"] + info["reward_ctrl"]
