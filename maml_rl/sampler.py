"""The vectorized rollout sampler: K trajectories for each of N tasks, all in lock-step.

All N·K environments step together; the policy runs once per time step for all of them,
each task with its own parameters (`torch.func.vmap` over stacked per-task parameters).
Sampling runs under `torch.no_grad` and contains no learning code: it returns a `Batch`.
The environments come from `maml_rl.vector.make_batch_env` on the chosen backend (``auto``,
``native``, ``threads``, ``warp``, ``sync``, ``async``, ``procs``); every CPU backend gives
the same batch for one seed (``warp`` computes in float32 and is the same to float32
round-off on half-cheetah, in distribution on Ant: `envs.warp_batch`).

The trajectories are gathered in torch tensors on the policy's device. A batch env with a
``device`` (the ``warp`` backend) takes the actions and returns observations, rewards and
flags as tensors there, so a step never leaves the device and the loop waits on the device
only once, at the end; the others' numpy arrays cross to the device once a step.

A family with ``reports_success = True`` also gets the per-step success flags of its
environments (`Batch.success`; see `maml_rl.vector`).

Episodes end at termination or at the family's ``max_episode_steps`` (time-limit truncation);
both close the mask the same way: the step that ends an episode is its last valid one, and
`maml_rl.returns` treats a truncated episode as ending there (value 0 after it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from maml_rl.actions import action_shape, distribution_shape, env_actions
from maml_rl.policy import Categorical, Normal, action_noise, forward, sample
from maml_rl.tasks import BatchEnv, Task, TaskFamily, TaskFamilyError
from maml_rl.threads import torch_threads
from maml_rl.types import Batch, Params
from maml_rl.vector import (
    BACKENDS,
    WARP_MISSING,
    EnvironmentFailure,
    make_batch_env,
    warp_installed,
)


class TrajectorySampler(Protocol):
    """What training and evaluation need of a sampler: `Sampler` here, `RaySampler` on Ray."""

    policy: nn.Module
    device: torch.device
    dtype: torch.dtype

    def sample(
        self,
        params: Params,
        tasks: Sequence[Task],
        seed: int,
        per_task: bool,
        first_task: int = 0,
        deterministic: bool = False,
    ) -> Batch: ...

    def close(self) -> None: ...


def task_chunk_size(num_tasks: int, trajectories: int, max_envs: int | None) -> int:
    """Tasks per chunk when N tasks of K trajectories are sampled with at most `max_envs`
    environments at once: with m = ⌊max_envs / K⌋ tasks at most per chunk, the N tasks take
    ⌈N / m⌉ chunks of c = ⌈N / ⌈N / m⌉⌉ ≤ m tasks (the last padded to c), as even as the cap
    allows; N itself when all N·K fit."""
    if max_envs is None or num_tasks * trajectories <= max_envs:
        return num_tasks
    most = max(1, max_envs // trajectories)
    chunks = -(-num_tasks // most)
    return -(-num_tasks // chunks)


class Sampler:
    """Collects `Batch`es of trajectories from a task family, one episode per environment.

    Args:
        family: the task family.
        policy: the policy module (architecture); parameters are passed to `sample`.
        trajectories_per_task: K.
        device, dtype: where the policy runs and the batch is returned; envs run on the CPU,
            except on the warp backend, which steps them on this device.
        backend: how the environments are stepped (`maml_rl.vector.make_batch_env`).
        policy_threads: torch's intra-op threads while sampling (restored after), default 1:
            the policy is small and the environments' threads need the cores; torch's OpenMP
            workers spin after each op and, oversubscribed, slowed sampling 2x in tests on 2
            cores. None leaves torch's setting alone.
        env_threads: threads of a native MuJoCo batch (None: all CPUs of this process).
        max_envs: the most environments stepped at once (None: all N·K). A call with more
            tasks runs them in consecutive chunks of equal size (`task_chunk_size`), so that
            the sampler holds one set of at most max_envs environments; the seeds and action
            noise are those of one pass (`sample`'s first_task). For environments that hold
            much memory (Meta-World's, 20–28 MiB each).
    """

    def __init__(
        self,
        family: TaskFamily,
        policy: nn.Module,
        trajectories_per_task: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        policy_threads: int | None = 1,
        env_threads: int | None = None,
        max_envs: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown sampler backend {backend!r}; choose one of {BACKENDS}")
        if backend == "warp" and not warp_installed():
            raise TaskFamilyError(WARP_MISSING)
        self.family, self.policy, self.backend = family, policy, backend
        self.trajectories_per_task = trajectories_per_task
        if max_envs is not None and max_envs < trajectories_per_task:
            raise ValueError(
                f"max_envs ({max_envs}) must be at least the {trajectories_per_task} "
                "trajectories of one task, which step together"
            )
        self.max_envs = max_envs
        self.device, self.dtype = torch.device(device), dtype
        self.policy_threads, self.env_threads = policy_threads, env_threads
        self.success = bool(getattr(family, "reports_success", False))
        self._envs: dict[int, BatchEnv] = {}

    def _env(self, num_envs: int) -> BatchEnv:
        if num_envs not in self._envs:
            env = make_batch_env(self.family, num_envs, self.backend, self.env_threads, self.device)
            if self.success and not hasattr(env, "success"):
                env.close()
                raise TaskFamilyError(
                    f"task family {self.family!r} sets reports_success, but its "
                    f"{type(env).__name__} has no `success` array; use a Gymnasium backend "
                    "(sync, async, procs) or give the batch env one"
                )
            self._envs[num_envs] = env
        return self._envs[num_envs]

    @torch.no_grad()
    def sample(
        self,
        params: Params,
        tasks: Sequence[Task],
        seed: int,
        per_task: bool,
        first_task: int = 0,
        deterministic: bool = False,
    ) -> Batch:
        """Run K episodes for each task; returns a Batch [T, N, K, ...] on the policy device.

        params: shared theta (per_task=False) or stacked per-task phi [N, *shape] (per_task=True).
        seed: seeds the environments and the action noise. first_task: the index of tasks[0]
        in the whole meta-batch (when a distributed sampler gives this one a slice): trajectory
        k of task n runs in an environment reset with seed + (first_task + n)·K + k and draws
        its action noise from task first_task + n's stream (`policy.action_noise`), so a task
        yields the same trajectories whichever sampler runs it (up to the rounding of the
        policy's matrix products, which can change in the last bit with their row count).
        Steps after an episode ended hold zeros (mask 0); T is the longest episode.
        deterministic: every action is the distribution's mode (`policy.sample` with zero
        noise: the Gaussian's mean, the categorical's most likely action), as test-time
        protocols such as Meta-World's measure.
        """
        with torch_threads(self.policy_threads):
            size = task_chunk_size(len(tasks), self.trajectories_per_task, self.max_envs)
            if size >= len(tasks):
                return self._sample(params, tasks, seed, per_task, first_task, deterministic)
            parts = []
            for start in range(0, len(tasks), size):
                # the last chunk is padded to the others' size with copies of its last task
                # (their trajectories, from streams after the meta-batch's, are dropped)
                rows = [min(start + i, len(tasks) - 1) for i in range(size)]
                count = min(size, len(tasks) - start)
                chunk_params = {n: p[rows] for n, p in params.items()} if per_task else params
                part = self._sample(
                    chunk_params,
                    [tasks[row] for row in rows],
                    seed,
                    per_task,
                    first_task + start,
                    deterministic,
                )
                parts.append(part.first_tasks(count))
            return Batch.concat_tasks(parts).trimmed()

    def _sample(
        self,
        params: Params,
        tasks: Sequence[Task],
        seed: int,
        per_task: bool,
        first_task: int,
        deterministic: bool,
    ) -> Batch:
        num_tasks, k = len(tasks), self.trajectories_per_task
        num_envs = num_tasks * k
        env = self._env(num_envs)
        discrete = isinstance(env.action_space, gym.spaces.Discrete)
        horizon = env.max_episode_steps
        act_shape = action_shape(env.action_space)
        noise_dims = distribution_shape(env.action_space)
        dist_type = Categorical if discrete else Normal
        noise_shape = (horizon, k, *noise_dims)
        if deterministic:
            noise = torch.zeros((horizon, num_tasks, *noise_shape[1:]), dtype=self.dtype)
        else:
            noise = action_noise(dist_type, noise_shape, seed, first_task, num_tasks, self.dtype)
        noise = noise.to(self.device)

        def failed(error: Exception, t: int) -> TaskFamilyError:
            where = f"task family {self.family!r}"
            if isinstance(error, EnvironmentFailure):
                n, trajectory = divmod(error.index, k)
                return TaskFamilyError(
                    f"{where}: task {first_task + n} ({tasks[n]}), trajectory {trajectory}, "
                    f"step {t}: {error.cause}"
                )
            if isinstance(error, TaskFamilyError):
                return error
            return TaskFamilyError(f"{where}: step {t} failed: {type(error).__name__}: {error}")

        try:
            obs = env.reset([task for task in tasks for _ in range(k)], seed=seed + first_task * k)
        except Exception as error:
            raise failed(error, 0) from error
        on_device = getattr(env, "device", None) is not None  # tensors in and out

        def tensor(values: object, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(values, device=self.device).to(dtype)

        def flags(values: object) -> torch.Tensor:
            return tensor(values if on_device else np.asarray(values, dtype=bool), torch.bool)

        # observations are kept at the precision the policy sees them
        zeros = functools.partial(torch.zeros, device=self.device)
        obs_buf = zeros((horizon, num_envs, obs.shape[-1]), dtype=self.dtype)
        act_buf = zeros((horizon, num_envs, *act_shape), dtype=torch.float64)
        rew_buf = zeros((horizon, num_envs), dtype=torch.float64)
        mask_buf = zeros((horizon, num_envs), dtype=torch.float32)
        success_buf = zeros((horizon, num_envs), dtype=torch.float32) if self.success else None
        alive = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        obs_t = tensor(obs, self.dtype)
        for t in range(horizon):
            if per_task:
                dist = forward(self.policy, params, obs_t.view(num_tasks, k, -1), per_task=True)
                actions_t = sample(dist, noise[t])
            else:
                dist = forward(self.policy, params, obs_t)
                actions_t = sample(dist, noise[t].reshape(num_envs, *noise_dims))
            actions_t = actions_t.reshape(num_envs, *act_shape)
            try:
                if on_device:  # the env clips to its own action bounds; tensors in and out
                    sent: Any = actions_t
                else:  # Box actions clipped to the space, Discrete ones shifted by its start
                    sent = env_actions(actions_t.cpu().numpy(), env.action_space)
                next_obs, reward, terminated, truncated = env.step(sent)
            except Exception as error:
                raise failed(error, t) from error
            if np.shape(next_obs) != tuple(obs_t.shape):
                raise TaskFamilyError(
                    f"task family {self.family!r}: step {t} returned observations of shape "
                    f"{np.shape(next_obs)}, expected {tuple(obs_t.shape)}"
                )
            live = alive.view(num_envs, *[1] * len(act_shape))
            obs_buf[t] = torch.where(alive[:, None], obs_t, 0)
            act_buf[t] = torch.where(live, actions_t.to(torch.float64), 0)
            mask_buf[t] = alive
            rew_buf[t] = torch.where(alive, tensor(reward, torch.float64), 0)
            if success_buf is not None:
                success_buf[t] = alive & flags(env.success)  # type: ignore[attr-defined]
            alive = alive & ~(flags(terminated) | flags(truncated))
            obs_t = tensor(next_obs, self.dtype)
            if not on_device and not alive.any():  # on a device: no wait for the host here
                break
        length = int(mask_buf.any(dim=1).sum())  # episodes end for good: the live steps lead

        def to_tensor(array: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            return array[:length].reshape(length, num_tasks, k, *array.shape[2:]).to(dtype)

        return Batch(
            observations=to_tensor(obs_buf, self.dtype),
            actions=to_tensor(act_buf, torch.long if discrete else self.dtype),
            rewards=to_tensor(rew_buf, self.dtype),
            mask=to_tensor(mask_buf, self.dtype),
            success=None if success_buf is None else to_tensor(success_buf, self.dtype),
        )

    def close(self) -> None:
        """Closes the environments (worker processes, thread pools)."""
        for env in self._envs.values():
            env.close()
        self._envs.clear()
