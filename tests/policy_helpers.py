"""Custom policies and observation-space families for the policy plug-in tests, importable as
``policy_helpers:Name`` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import itertools
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from process_env_helpers import GymOnly
from torch import Tensor, nn

from maml_rl import Categorical, Normal


class LayerNormNet(nn.Module):
    """An MLP with LayerNorm after each hidden layer and a log-std; its subclasses' forward
    returns a distribution from them."""

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, hidden: int = 16
    ) -> None:
        super().__init__()
        obs_dim, act_dim = observation_space.shape[0], action_space.shape[0]
        self.body = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.LayerNorm(hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.Tanh(),
            nn.Linear(hidden, act_dim),
        )
        self.log_std = nn.Parameter(torch.full((act_dim,), -0.3))


class LayerNormMLP(LayerNormNet):
    """A Gaussian MLP with LayerNorm after each hidden layer (not the built-in MLP)."""

    def forward(self, observations: Tensor) -> Normal:
        return Normal(self.body(observations), self.log_std)


class PlainMLP(nn.Module):
    """The built-in Gaussian MLP's network written as a user would (64x64 tanh by default)."""

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        hidden: tuple[int, ...] = (64, 64),
    ) -> None:
        super().__init__()
        sizes = (observation_space.shape[0], *hidden)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.Tanh()]
        self.mean = nn.Sequential(*layers, nn.Linear(sizes[-1], action_space.shape[0]))
        self.log_std = nn.Parameter(torch.zeros(action_space.shape[0]))

    def forward(self, observations: Tensor) -> Normal:
        mean = self.mean(observations)
        return Normal(mean, self.log_std.expand_as(mean))


class TorchNormalMLP(LayerNormNet):
    """Returns a torch.distributions.Normal (validate_args=False) instead of maml_rl.Normal."""

    def forward(self, observations: Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(
            self.body(observations), self.log_std.exp(), validate_args=False
        )


class SmallCNN(nn.Module):
    """A convolutional Gaussian policy for image observations [B, H, W, C] (channels last)."""

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box) -> None:
        super().__init__()
        height, width, channels = observation_space.shape
        self.scale = float(np.max(observation_space.high)) or 1.0
        self.conv = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh())
        self.head = nn.Linear(4 * height * width, action_space.shape[0])
        self.log_std = nn.Parameter(torch.zeros(action_space.shape[0]))

    def forward(self, observations: Tensor) -> Normal:
        x = observations.permute(0, 3, 1, 2) / self.scale
        return Normal(self.head(self.conv(x).flatten(1)), self.log_std)


class DictPolicy(nn.Module):
    """A Gaussian policy reading a Dict observation {"position": [2], "clock": [1]}."""

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box) -> None:
        super().__init__()
        self.position = nn.Linear(2, 8)
        self.clock = nn.Linear(1, 8)
        self.head = nn.Linear(8, action_space.shape[0])
        self.log_std = nn.Parameter(torch.zeros(action_space.shape[0]))

    def forward(self, observations: dict[str, Tensor]) -> Normal:
        hidden = torch.tanh(
            self.position(observations["position"]) + self.clock(observations["clock"])
        )
        return Normal(self.head(hidden), self.log_std)


class SoftmaxPolicy(nn.Module):
    """A categorical policy for Discrete actions."""

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Discrete
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(observation_space.shape[0], 8), nn.Tanh(),
                                 nn.Linear(8, int(action_space.n)))  # fmt: skip

    def forward(self, observations: Tensor) -> Categorical:
        return Categorical(self.net(observations))


# ----------------------------------------------------------------- policies the check refuses


class BatchNormMLP(LayerNormMLP):
    def __init__(self, observation_space: Any, action_space: Any) -> None:
        super().__init__(observation_space, action_space)
        self.body[1] = nn.BatchNorm1d(16)


class ReturnsTensor(LayerNormMLP):
    def forward(self, observations: Tensor) -> Tensor:  # type: ignore[override]
        return self.body(observations)


class WrongShape(LayerNormMLP):
    def forward(self, observations: Tensor) -> Normal:
        mean = self.body(observations)
        return Normal(torch.cat([mean, mean], -1), self.log_std)


class Detached(LayerNormMLP):
    def forward(self, observations: Tensor) -> Normal:
        return Normal(self.body(observations).detach(), self.log_std.detach())


class ValidatingNormal(LayerNormNet):
    """torch.distributions.Normal with its default argument validation (runs under vmap)."""

    def forward(self, observations: Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.body(observations), self.log_std.exp())


class IndependentNormalMLP(LayerNormNet):
    """Returns Independent(torch.distributions.Normal, 1), a Gaussian over the action vector."""

    def forward(self, observations: Tensor) -> torch.distributions.Independent:
        normal = torch.distributions.Normal(
            self.body(observations), self.log_std.exp(), validate_args=False
        )
        return torch.distributions.Independent(normal, 1, validate_args=False)


def not_a_module(observation_space: Any, action_space: Any) -> str:
    return "policy"


# ------------------------------------------------------------- families of other observations


class DictNavigation(GymOnly):
    """2D navigation observing a Dict {"position": [2], "clock": [1] (t / H)} (gym envs only)."""

    def make_env(self) -> gym.Env:
        return _DictObservation(super().make_env(), self.max_episode_steps)


class _DictObservation(gym.ObservationWrapper):
    def __init__(self, env: gym.Env, horizon: int) -> None:
        super().__init__(env)
        self.horizon, self.t = horizon, 0
        self.observation_space = gym.spaces.Dict(
            {
                "position": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                "clock": gym.spaces.Box(0.0, 1.0, (1,), np.float32),
            }
        )

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.t = 0
        return super().reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        self.t += 1
        return super().step(action)

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        clock = np.array([self.t / self.horizon], dtype=np.float32)
        return {"position": np.asarray(observation, np.float32), "clock": clock}
