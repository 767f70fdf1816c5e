"""The vectorized rollout sampler: K trajectories for each of N tasks, all in lock-step.

All N·K environments step together; the policy runs once per time step for all of them,
each task with its own parameters (`torch.func.vmap` over stacked per-task parameters).
Sampling runs under `torch.no_grad` and contains no learning code: it returns a `Batch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from maml_rl.policy import forward, sample
from maml_rl.tasks import BatchEnv, Task, TaskFamily
from maml_rl.types import Batch, Params
from maml_rl.vector import make_batch_env


class Sampler:
    """Collects `Batch`es of trajectories from a task family, one episode per environment.

    Args:
        family: the task family.
        policy: the policy module (architecture); parameters are passed to `sample`.
        trajectories_per_task: K.
        device, dtype: where the policy runs and the batch is returned; envs run on the CPU.
    """

    def __init__(
        self,
        family: TaskFamily,
        policy: nn.Module,
        trajectories_per_task: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.family, self.policy = family, policy
        self.trajectories_per_task = trajectories_per_task
        self.device, self.dtype = torch.device(device), dtype
        self._envs: dict[int, BatchEnv] = {}

    def _env(self, num_envs: int) -> BatchEnv:
        if num_envs not in self._envs:
            self._envs[num_envs] = make_batch_env(self.family, num_envs)
        return self._envs[num_envs]

    @torch.no_grad()
    def sample(self, params: Params, tasks: Sequence[Task], seed: int, per_task: bool) -> Batch:
        """Run K episodes for each task; returns a Batch [T, N, K, ...] on the policy device.

        params: shared theta (per_task=False) or stacked per-task phi [N, *shape] (per_task=True).
        seed: seeds the environments (env i gets seed + i) and the action noise.
        """
        num_tasks, k = len(tasks), self.trajectories_per_task
        num_envs = num_tasks * k
        env = self._env(num_envs)
        discrete = isinstance(env.action_space, gym.spaces.Discrete)
        horizon = env.max_episode_steps
        generator = torch.Generator(device=self.device).manual_seed(seed)

        obs = env.reset([task for task in tasks for _ in range(k)], seed=seed)
        obs_buf = np.zeros((horizon, num_envs, obs.shape[-1]), dtype=np.float32)
        act_shape = () if discrete else env.action_space.shape
        act_buf = np.zeros((horizon, num_envs, *act_shape), dtype=np.float64)
        rew_buf = np.zeros((horizon, num_envs), dtype=np.float64)
        mask_buf = np.zeros((horizon, num_envs), dtype=np.float32)
        alive = np.ones(num_envs, dtype=bool)
        length = horizon
        for t in range(horizon):
            obs_t = torch.as_tensor(obs, dtype=self.dtype, device=self.device)
            if per_task:
                dist = forward(self.policy, params, obs_t.view(num_tasks, k, -1), per_task=True)
            else:
                dist = forward(self.policy, params, obs_t)
            actions = sample(dist, generator).reshape(num_envs, *act_shape).cpu().numpy()
            next_obs, reward, terminated, truncated = env.step(actions)
            obs_buf[t], act_buf[t], mask_buf[t] = obs, actions, alive
            rew_buf[t] = np.where(alive, reward, 0.0)
            alive = alive & ~(np.asarray(terminated) | np.asarray(truncated))
            obs = next_obs
            if not alive.any():
                length = t + 1
                break

        def to_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            array = array[:length].reshape(length, num_tasks, k, *array.shape[2:])
            return torch.as_tensor(array, device=self.device).to(dtype)

        return Batch(
            observations=to_tensor(obs_buf, self.dtype),
            actions=to_tensor(act_buf, torch.long if discrete else self.dtype),
            rewards=to_tensor(rew_buf, self.dtype),
            mask=to_tensor(mask_buf, self.dtype),
        )

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
