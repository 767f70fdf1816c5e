"""Ant velocity, direction and goal (Finn et al. 2017, Sec. 5.3) on Gymnasium's Ant-v5.

Physics, observation, reset noise, health test and cost terms are Gymnasium's; dt = 0.05
(frame_skip 5). The observation holds the torso height and orientation, joint angles, all
velocities and the contact forces ``clip(cfrc_ext, -1, 1)`` of the 13 bodies (105 numbers;
27 with ``include_contact_forces=False``); ant-goal adds the torso's x, y (107). Gymnasium
calls ``mj_rnePostConstraint`` after each step, so the contact forces are current.

With v_x = ``info["x_velocity"]``, (x, y) = ``info["x_position"], info["y_position"]``,
a the action sent to the robot (policy output / action_scale, clipped to [-1, 1]) and

    costs = -0.005‖a‖² - 0.0005‖clip(cfrc_ext, -1, 1)‖² + 0.05·healthy
          = info["reward_ctrl"] + info["reward_contact"] + info["reward_survive"]

(``ctrl_cost_weight=0.005``, ``contact_cost_weight=5e-4``, ``healthy_reward=0.05``):

* ``ant-vel``:  v_goal ~ U[0, 3],          r = -|v_x - v_goal| + 1.0 + costs
* ``ant-dir``:  dir ∈ {-1, +1}, p = 1/2,   r = dir · v_x + costs
* ``ant-goal``: goal ~ U[-3, 3]² (ProMP: uniform in the disc of radius 3, ``goal_radius=3``),
  r = -‖(x, y) - goal‖₁ + 4.0 + costs

The episode terminates when the torso height leaves [0.2, 1.0] (Gymnasium's health test; the
survive bonus is paid only on healthy steps, as in v5) and is truncated after
``max_episode_steps`` (100: pytorch-maml-rl/ProMP; the paper used 200 steps of rllab's ant with
dt 0.02, i.e. ``frame_skip=2``, ``action_scale=1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from .mujoco_base import (
    DirectionTask,
    GoalTask,
    MujocoFamily,
    VelocityTask,
    check_range,
    sample_directions,
    sample_velocities,
)
from .mujoco_batch import Simulations, array_namespace, control_reward, copied

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; not run

MAIN_BODY = 1
"""Gymnasium's Ant-v5 ``main_body``: the torso, whose xy velocity is ``x_velocity``."""
CONTACT_FORCE_RANGE = (-1.0, 1.0)
"""Gymnasium's Ant-v5 ``contact_force_range``: cfrc_ext is clipped to it."""


class AntOptions(TypedDict, total=False):
    """The robot, cost and protocol arguments every Ant family takes (see `AntFamily`)."""

    max_episode_steps: int
    action_scale: float
    ctrl_cost_weight: float
    contact_cost_weight: float
    survive_reward: float
    healthy_z_range: Sequence[float]
    include_contact_forces: bool
    frame_skip: int
    reset_noise_scale: float


class AntFamily(MujocoFamily):
    """Ant-v5 with a task-dependent reward; subclasses define the task and take the robot's
    arguments (`AntOptions`, defaults here: the pytorch-maml-rl/ProMP protocol) by keyword."""

    env_id = "Ant-v5"
    contact_forces = True

    observe_position = False
    """Whether the observation starts with the torso's x, y (ant-goal)."""

    def __init__(
        self,
        *,
        max_episode_steps: int = 100,
        action_scale: float = 10.0,
        ctrl_cost_weight: float = 0.005,
        contact_cost_weight: float = 5e-4,
        survive_reward: float = 0.05,
        healthy_z_range: Sequence[float] = (0.2, 1.0),
        include_contact_forces: bool = True,
        frame_skip: int = 5,
        reset_noise_scale: float = 0.1,
    ) -> None:
        low, high = (float(z) for z in healthy_z_range)
        check_range("healthy_z_range", low, high)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.contact_cost_weight = float(contact_cost_weight)
        self.survive_reward = float(survive_reward)
        self.healthy_z_range = (low, high)
        self.include_contact_forces = bool(include_contact_forces)
        super().__init__(
            max_episode_steps,
            action_scale,
            {
                "ctrl_cost_weight": self.ctrl_cost_weight,
                "contact_cost_weight": self.contact_cost_weight,
                "healthy_reward": self.survive_reward,
                "healthy_z_range": (low, high),
                "terminate_when_unhealthy": True,
                "include_cfrc_ext_in_observation": bool(include_contact_forces),
                "exclude_current_positions_from_observation": not self.observe_position,
                "frame_skip": frame_skip,
                "reset_noise_scale": float(reset_noise_scale),
            },
        )

    @staticmethod
    def costs(info: Mapping[str, Any]) -> Any:
        """Control and contact costs and the survive bonus, as Gymnasium computed them."""
        return info["reward_ctrl"] + info["reward_contact"] + info["reward_survive"]

    # Ant-v5's observation, info terms and health test for B simulations (envs.mujoco_batch):
    # array code for numpy arrays (C steppers) and torch tensors (Warp stepper) alike

    def batch_position(self, sim: Simulations) -> Any:
        """The torso's xy [B, 2] that the velocity is measured from."""
        return copied(sim.xpos[:, MAIN_BODY, :2])

    def batch_observation(self, sim: Simulations) -> Any:
        """[B, 105]: qpos (without x, y unless observed), qvel, clipped cfrc_ext of bodies 1:."""
        xp = array_namespace(sim.qpos)
        parts = [sim.qpos if self.observe_position else sim.qpos[:, 2:], sim.qvel]
        if self.include_contact_forces:
            contact = xp.clip(sim.cfrc_ext[:, 1:], *CONTACT_FORCE_RANGE)
            parts.append(contact.reshape(len(contact), -1))
        return xp.concatenate(parts, axis=1)

    def batch_step_info(
        self, sim: Simulations, before: Any, action: Any
    ) -> tuple[dict[str, Any], Any]:
        """Info terms [B] after a step from torso xy = before [B, 2] with robot actions [B, 8],
        and terminated [B]: the state is not finite or the torso height leaves the range."""
        xp = array_namespace(sim.qpos)
        velocity = (sim.xpos[:, MAIN_BODY, :2] - before) / self.dt
        low, high = self.healthy_z_range
        z = sim.qpos[:, 2]
        finite = xp.isfinite(sim.qpos).all(axis=1) & xp.isfinite(sim.qvel).all(axis=1)
        healthy = finite & (low <= z) & (z <= high)
        contact = xp.clip(sim.cfrc_ext, *CONTACT_FORCE_RANGE).reshape(len(z), -1)
        info = {
            "x_position": copied(sim.qpos[:, 0]),
            "y_position": copied(sim.qpos[:, 1]),
            "x_velocity": velocity[:, 0],
            "y_velocity": velocity[:, 1],
            "reward_ctrl": control_reward(action, self.ctrl_cost_weight),
            "reward_contact": -(self.contact_cost_weight * xp.sum(xp.square(contact), axis=1)),
            "reward_survive": healthy * self.survive_reward,
        }
        return info, ~healthy

    def _costs_text(self) -> str:
        return (
            f"- {self.ctrl_cost_weight:g}‖a‖² - {self.contact_cost_weight:g}‖contact‖² "
            f"+ {self.survive_reward:g}"
        )


class AntVel(AntFamily):
    """Run at a target velocity: r = -|v_x - v_goal| + forward_bonus + costs.

    v_goal ~ U[low, high].
    """

    default_task = VelocityTask(velocity=1.0)

    def __init__(
        self,
        low: float = 0.0,
        high: float = 3.0,
        forward_bonus: float = 1.0,
        **options: Unpack[AntOptions],
    ) -> None:
        check_range("ant-vel velocity", low, high)
        self.low, self.high = float(low), float(high)
        self.forward_bonus = float(forward_bonus)
        super().__init__(**options)

    def __repr__(self) -> str:
        return (
            f"AntVel(v_goal ~ U[{self.low:g}, {self.high:g}], r = -|v_x - v_goal| "
            f"+ {self.forward_bonus:g} {self._costs_text()}, {self._protocol()})"
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        return sample_velocities(n, self.low, self.high, rng)

    def oracle_features(self, task: VelocityTask) -> np.ndarray:
        return np.array([task.velocity], dtype=np.float32)

    def reward(self, task: VelocityTask, info: Mapping[str, Any]) -> Any:
        """r = -|v_x - v_goal| + forward_bonus + costs(info); scalars or arrays [B]."""
        return -abs(info["x_velocity"] - task.velocity) + self.forward_bonus + self.costs(info)


class AntDir(AntFamily):
    """Run forward or backward: r = dir · v_x + costs, dir ∈ {-1, +1}."""

    default_task = DirectionTask(direction=1)

    def __repr__(self) -> str:
        return (
            f"AntDir(dir ∈ {{-1, +1}}, p = 1/2, r = dir·v_x {self._costs_text()}, "
            f"{self._protocol()})"
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[DirectionTask]:
        return sample_directions(n, rng)

    def oracle_features(self, task: DirectionTask) -> np.ndarray:
        return np.array([task.direction], dtype=np.float32)

    def reward(self, task: DirectionTask, info: Mapping[str, Any]) -> Any:
        """r = dir · v_x + costs(info); scalars or arrays [B]."""
        return task.direction * info["x_velocity"] + self.costs(info)


class AntGoal(AntFamily):
    """Walk to a goal: r = -‖(x, y) - goal‖₁ + goal_bonus + costs.

    goal ~ U[low, high]², or uniform in the disc of radius `goal_radius` when it is given.
    """

    default_task = GoalTask(goal=(0.0, 0.0))
    observe_position = True

    def __init__(
        self,
        low: float = -3.0,
        high: float = 3.0,
        goal_radius: float | None = None,
        goal_bonus: float = 4.0,
        **options: Unpack[AntOptions],
    ) -> None:
        check_range("ant-goal goal", low, high)
        if goal_radius is not None and not goal_radius > 0:
            raise ValueError(f"goal_radius must be > 0 or null, got {goal_radius}")
        self.low, self.high = float(low), float(high)
        self.goal_radius = None if goal_radius is None else float(goal_radius)
        self.goal_bonus = float(goal_bonus)
        super().__init__(**options)

    def __repr__(self) -> str:
        if self.goal_radius is None:
            goals = f"goal ~ U[{self.low:g}, {self.high:g}]²"
        else:
            goals = f"goal ~ U(disc of radius {self.goal_radius:g})"
        return (
            f"AntGoal({goals}, r = -‖xy - goal‖₁ + {self.goal_bonus:g} {self._costs_text()}, "
            f"{self._protocol()})"
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        if self.goal_radius is None:
            goals = rng.uniform(self.low, self.high, size=(n, 2))
        else:
            angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
            radius = self.goal_radius * np.sqrt(rng.uniform(0.0, 1.0, size=n))
            goals = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)
        return [GoalTask(goal=(float(x), float(y))) for x, y in goals]

    def oracle_features(self, task: GoalTask) -> np.ndarray:
        return np.asarray(task.goal, dtype=np.float32)

    def reward(self, task: GoalTask, info: Mapping[str, Any]) -> Any:
        """r = -(|x - g_x| + |y - g_y|) + goal_bonus + costs(info); scalars or arrays [B]."""
        goal = array_namespace(task.goal).asarray(task.goal)  # a tuple, or stacked [B, 2]
        distance = abs(info["x_position"] - goal[..., 0]) + abs(info["y_position"] - goal[..., 1])
        return -distance + self.goal_bonus + self.costs(info)
