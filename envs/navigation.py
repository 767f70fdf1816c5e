"""2D navigation (Finn et al. 2017, Sec. 5.3): a point moves to a goal in the plane.

Task: goal ~ U[low, high]², default U[-0.5, 0.5]². The agent starts at the origin; the
observation is its position (x, y); the action is a velocity, clipped to [-0.1, 0.1]²;
the reward after each move is r = -‖position - goal‖₂. The episode terminates when the agent
is within 0.01 of the goal on both axes and is truncated after 100 steps.

`Navigation2DBatch` steps any number of agents as array code; `Navigation2DEnv` is the same
dynamics as a single Gymnasium environment. Both call `navigation_step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from maml_rl.tasks import check_count


@dataclass(frozen=True)
class NavigationTask:
    """One 2D navigation task: the goal position."""

    goal: tuple[float, float]


def navigation_step(
    position: np.ndarray, action: np.ndarray, goal: np.ndarray, max_action: float, tolerance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of B agents. position, action, goal: [B, 2] -> (position', reward [B], done [B]).

    position' = position + clip(action, -max_action, max_action)
    reward    = -‖position' - goal‖₂
    done      = |position' - goal| < tolerance on both axes
    """
    new_position = position + np.clip(action, -max_action, max_action)
    offset = new_position - goal
    reward = -np.sqrt((offset**2).sum(axis=-1))
    done = (np.abs(offset) < tolerance).all(axis=-1)
    return new_position, reward, done


class Navigation2D:
    """The 2D navigation task family."""

    def __init__(
        self,
        low: float = -0.5,
        high: float = 0.5,
        max_episode_steps: int = 100,
        max_action: float = 0.1,
        goal_tolerance: float = 0.01,
    ) -> None:
        if not low < high:
            raise ValueError(f"navigation needs low < high, got low={low}, high={high}")
        check_count("max_episode_steps", max_episode_steps)
        if not max_action > 0:
            raise ValueError(f"max_action must be > 0, got {max_action}")
        if not goal_tolerance > 0:
            raise ValueError(f"goal_tolerance must be > 0, got {goal_tolerance}")
        self.low, self.high = float(low), float(high)
        self.max_episode_steps = int(max_episode_steps)
        self.max_action = float(max_action)
        self.goal_tolerance = float(goal_tolerance)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-self.max_action, self.max_action, (2,), np.float32)

    def __repr__(self) -> str:
        return f"Navigation2D(goal ~ U[{self.low}, {self.high}]², H={self.max_episode_steps})"

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[NavigationTask]:
        goals = rng.uniform(self.low, self.high, size=(n, 2))
        return [NavigationTask(goal=(float(x), float(y))) for x, y in goals]

    def oracle_features(self, task: NavigationTask) -> np.ndarray:
        """Task parameters as a vector, appended to observations by the oracle baseline."""
        return np.asarray(task.goal, dtype=np.float32)

    def make_env(self) -> Navigation2DEnv:
        return Navigation2DEnv(self)

    def draw_trajectories(
        self, ax: Any, task: NavigationTask, observations: np.ndarray, mask: np.ndarray
    ) -> None:
        """Draws K trajectories of one task on matplotlib axes `ax` (the drawing hook of
        `maml-rl render`): observations [T, K, 2] are the positions before each step, mask
        [T, K] their validity; the start is a dot, the goal a star, the task square dashed."""
        for k in range(observations.shape[1]):
            length = int(mask[:, k].sum())
            ax.plot(observations[:length, k, 0], observations[:length, k, 1], lw=0.8, alpha=0.6)
        ax.plot(0.0, 0.0, "ko", ms=4)
        ax.plot(*task.goal, marker="*", ms=14, color="crimson", ls="none")
        low, high = self.low, self.high
        ax.plot([low, high, high, low, low], [low, low, high, high, low], "k--", lw=0.5)
        valid = observations[mask > 0]
        reach = float(np.abs(valid).max()) if valid.size else 0.0
        extent = max(max(abs(low), abs(high)) + 0.25 * (high - low), reach + 0.05)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")

    def make_batch_env(self, num_envs: int) -> Navigation2DBatch:
        return Navigation2DBatch(self, num_envs)


class Navigation2DBatch:
    """`num_envs` navigation agents, each with its own goal, stepped as one array."""

    def __init__(self, family: Navigation2D, num_envs: int) -> None:
        self.family, self.num_envs = family, num_envs
        self.observation_space = family.observation_space
        self.action_space = family.action_space
        self.max_episode_steps = family.max_episode_steps
        self._position = np.zeros((num_envs, 2))
        self._goal = np.zeros((num_envs, 2))
        self._t = 0

    def reset(self, tasks: Sequence[NavigationTask], seed: int | None = None) -> np.ndarray:
        if len(tasks) != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} tasks, got {len(tasks)}")
        self._goal = np.array([task.goal for task in tasks], dtype=np.float64)
        self._position = np.zeros((self.num_envs, 2))
        self._t = 0
        return self._position.astype(np.float32)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        f = self.family
        self._position, reward, terminated = navigation_step(
            self._position,
            np.asarray(actions, np.float64),
            self._goal,
            f.max_action,
            f.goal_tolerance,
        )
        self._t += 1
        truncated = np.full(self.num_envs, self._t >= self.max_episode_steps)
        return self._position.astype(np.float32), reward, terminated, truncated

    def close(self) -> None:
        pass


class Navigation2DEnv(gym.Env):
    """One navigation agent as a Gymnasium environment; the task comes through reset options."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gym.Env's declaration)

    def __init__(
        self, family: Navigation2D | None = None, task: NavigationTask | None = None
    ) -> None:
        self.family = family or Navigation2D()
        self.observation_space = self.family.observation_space
        self.action_space = self.family.action_space
        self.task = task or NavigationTask(goal=(0.0, 0.0))
        self._position = np.zeros((1, 2))
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options and "task" in options:
            self.task = options["task"]
        self._position = np.zeros((1, 2))
        self._t = 0
        return self._position[0].astype(np.float32), {"task": self.task}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        f = self.family
        goal = np.asarray(self.task.goal, dtype=np.float64)[None]
        action = np.asarray(action, dtype=np.float64).reshape(1, 2)
        self._position, reward, done = navigation_step(
            self._position, action, goal, f.max_action, f.goal_tolerance
        )
        self._t += 1
        truncated = self._t >= f.max_episode_steps
        return self._position[0].astype(np.float32), float(reward[0]), bool(done[0]), truncated, {}
