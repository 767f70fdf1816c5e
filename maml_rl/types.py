"""Types that cross module boundaries: parameter dictionaries and trajectory batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

Params = dict[str, Tensor]
"""Explicit policy parameters, name -> tensor, as used by `torch.func.functional_call`.

Shared meta-parameters ``theta`` have the module's own shapes; per-task parameters
(``phi``) carry a leading task dimension ``[N, *shape]``.
"""


@dataclass(frozen=True)
class Batch:
    """Trajectories of N tasks × K episodes, padded to T time steps.

    Shapes (T time steps, N tasks, K trajectories per task):
        observations: [T, N, K, obs_dim]
        actions:      [T, N, K, act_dim] (continuous) or [T, N, K] (discrete)
        rewards:      [T, N, K]
        mask:         [T, N, K], 1.0 where the step happened, 0.0 after the episode ended
        weights:      [T, N, K] or None, the weight of each step in every mean over a task's
                      steps (inner loss, surrogate, KL); None means the mask (every valid step
                      of a task weighs the same). See `returns.loss_weights`.
        success:      [T, N, K] or None, 1.0 where the step reported success
                      (``info["success"]``) for families with ``reports_success``; None for
                      the others. An episode succeeds if any of its valid steps does.

    Steps after an episode ended hold zeros in every field.

    A step t is valid when the episode had not terminated or been truncated before t;
    the reward of the terminating step is included.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    weights: Tensor | None = None
    success: Tensor | None = None

    def __post_init__(self) -> None:
        lead = tuple(self.rewards.shape)
        if len(lead) != 3:
            raise ValueError(f"rewards must be [T, N, K], got {lead}")
        if tuple(self.mask.shape) != lead:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} != rewards shape {lead}")
        if tuple(self.observations.shape[:3]) != lead or self.observations.dim() != 4:
            raise ValueError(
                f"observations must be [T, N, K, obs_dim] with [T, N, K] = {lead}, "
                f"got {tuple(self.observations.shape)}"
            )
        if tuple(self.actions.shape[:3]) != lead or self.actions.dim() not in (3, 4):
            raise ValueError(
                f"actions must be [T, N, K] or [T, N, K, act_dim] with [T, N, K] = {lead}, "
                f"got {tuple(self.actions.shape)}"
            )
        for name in ("weights", "success"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != lead:
                raise ValueError(f"{name} shape {tuple(value.shape)} != rewards shape {lead}")

    @property
    def step_weights(self) -> Tensor:
        """Weights of the steps in a task's means, [T, N, K]: `weights`, or the mask if None."""
        return self.mask if self.weights is None else self.weights

    def with_weights(self, weights: Tensor | None) -> Batch:
        """The same trajectories with other step weights (None: the mask)."""
        return replace(self, weights=weights)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        mapped: dict[str, Any] = {k: None if v is None else fn(v) for k, v in values.items()}
        return Batch(**mapped)

    @property
    def num_tasks(self) -> int:
        return int(self.rewards.shape[1])

    @property
    def episode_returns(self) -> Tensor:
        """Undiscounted return of every trajectory, [N, K]."""
        return (self.rewards * self.mask).sum(dim=0)

    @property
    def episode_success(self) -> Tensor | None:
        """Whether each trajectory succeeded at any valid step, [N, K] (1.0 / 0.0), or None
        when the batch carries no success signal."""
        if self.success is None:
            return None
        return (self.success * self.mask).amax(dim=0)

    @property
    def num_steps(self) -> int:
        """Number of environment steps actually taken (valid entries of the mask)."""
        return int(self.mask.sum().item())

    def first_tasks(self, count: int) -> Batch:
        """The trajectories of tasks 0..count-1: [T, count, K, ...]."""
        return self.task_slice(0, count)

    def task_slice(self, start: int, stop: int) -> Batch:
        """The trajectories of tasks start..stop-1: [T, stop - start, K, ...]."""
        return self._map(lambda x: x[:, start:stop])

    def trimmed(self) -> Batch:
        """Without the trailing steps at which every episode has ended (mask 0 for all N·K)."""
        length = int(self.mask.flatten(1).any(dim=1).sum())  # the live steps lead
        return self if length == self.mask.shape[0] else self._map(lambda x: x[:length])

    @classmethod
    def concat_tasks(cls, batches: Sequence[Batch]) -> Batch:
        """Batches of consecutive task slices as one [T, ΣN, K, ...], T the longest, shorter
        ones padded with zeros (mask 0: steps after every episode of the slice ended)."""
        horizon = max(b.rewards.shape[0] for b in batches)

        def pad(x: Tensor) -> Tensor:
            return torch.cat([x, x.new_zeros(horizon - x.shape[0], *x.shape[1:])])

        def joined(name: str) -> Tensor | None:
            parts = [getattr(b, name) for b in batches]
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts):
                raise ValueError(f"cannot concatenate batches with and without {name}")
            return torch.cat([pad(p) for p in parts], dim=1)

        joined_fields: dict[str, Any] = {f.name: joined(f.name) for f in fields(cls)}
        return cls(**joined_fields)

    def to(self, device: torch.device | str) -> Batch:
        return self._map(lambda x: x.to(device))
