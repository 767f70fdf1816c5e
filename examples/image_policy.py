"""A convolutional policy on a task family whose observations are images.

    python examples/image_policy.py [--out runs/image_policy] [--iterations 60] [--tiny]

`ImageNavigation` is 2D navigation (a point moves to a hidden goal in the plane, reward minus
the distance) whose observation is an 8x8 grey image (uint8, channels last) of where the
point is, instead of its coordinates: the policy must read its position from pixels. The
family is a plug-in like any other (`env: image_policy:ImageNavigation`); the sampler steps
flat observations and the policy receives them as a [B, 8, 8, 1] tensor.

`SmallCNN` is the policy: two 3x3 convolutions, a linear head for the mean of a Gaussian, a
learned log-std. After meta-training, the script evaluates adaptation on 40 held-out goals and
prints the paired gain after one step, post - pre, with its 95 % interval.

--tiny runs it in seconds at toy sizes (what CI does, tests/test_examples.py).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from scipy import stats
from torch import nn

import maml_rl
from maml_rl_envs.navigation import Navigation2D, NavigationTask

SIZE = 8
EXTENT = 1.0
"""The image shows [-EXTENT, EXTENT]² (goals lie in [-0.5, 0.5]²)."""
BLOB = 0.15
"""Width of the point's Gaussian blob, in plane units (an 8x8 image still locates it finely)."""


def render(positions: np.ndarray) -> np.ndarray:
    """positions [B, 2] -> images [B, SIZE, SIZE, 1] uint8: a Gaussian blob at each position,
    255 · exp(-‖c - p‖² / (2 BLOB²)) at each pixel centre c."""
    centres = (np.arange(SIZE) + 0.5) / SIZE * 2 * EXTENT - EXTENT
    dx = centres[None, None, :] - positions[:, 0, None, None]  # columns: x
    dy = centres[None, :, None] - positions[:, 1, None, None]  # rows: y
    image = 255.0 * np.exp(-(dx**2 + dy**2) / (2 * BLOB**2))
    return image.astype(np.uint8)[..., None]


IMAGE_SPACE = gym.spaces.Box(0, 255, (SIZE, SIZE, 1), np.uint8)


class ImageNavigation(Navigation2D):
    """2D navigation observed as an 8x8 image of the point (see the module docstring)."""

    def __repr__(self) -> str:
        return f"ImageNavigation(goal ~ U[{self.low}, {self.high}]², H={self.max_episode_steps})"

    def make_env(self) -> gym.Env:
        return _ImageObservation(super().make_env())

    def make_batch_env(self, num_envs: int) -> _ImageBatch:
        return _ImageBatch(super().make_batch_env(num_envs))


class _ImageObservation(gym.ObservationWrapper):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = IMAGE_SPACE

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return render(np.asarray(observation, np.float64)[None])[0]


class _ImageBatch:
    """The navigation batch env with image observations [B, 8, 8, 1]."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.num_envs, self.max_episode_steps = env.num_envs, env.max_episode_steps
        self.action_space, self.observation_space = env.action_space, IMAGE_SPACE

    def reset(self, tasks: Sequence[NavigationTask], seed: int | None = None) -> np.ndarray:
        return render(self.env.reset(tasks, seed))

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        positions, reward, terminated, truncated = self.env.step(actions)
        return render(positions), reward, terminated, truncated

    def close(self) -> None:
        self.env.close()


class SmallCNN(nn.Module):
    """images [B, H, W, C] (0..255) -> Normal(mean [B, A], log_std [A]): two 3x3 convolutions
    with tanh, then a linear layer to the mean."""

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, channels: int = 8
    ) -> None:
        super().__init__()
        height, width, depth = observation_space.shape
        self.conv = nn.Sequential(
            nn.Conv2d(depth, channels, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.Tanh(),
        )
        features = channels * math.ceil(height / 2) * math.ceil(width / 2)
        self.head = nn.Linear(features, action_space.shape[0])
        self.log_std = nn.Parameter(torch.zeros(action_space.shape[0]))

    def forward(self, observations: torch.Tensor) -> maml_rl.Normal:
        x = observations.permute(0, 3, 1, 2) / 255.0
        return maml_rl.Normal(self.head(self.conv(x).flatten(1)), self.log_std)


TINY = dict(num_batches=2, meta_batch_size=2, fast_batch_size=2, cg_iters=2,
            env_kwargs={"max_episode_steps": 10})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/image_policy", help="run directory (replaced)")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for CI")
    args = parser.parse_args()
    # 10 tasks x 10 trajectories per meta-batch: the CNN's second derivatives cost about ten
    # times the built-in MLP's closed-form ones
    full = {"num_batches": args.iterations, "meta_batch_size": 10, "fast_batch_size": 10,
            "env_kwargs": {"max_episode_steps": 100}}  # fmt: skip
    sizes = TINY if args.tiny else full
    cfg = maml_rl.load_config(
        "navigation", env=ImageNavigation, policy=SmallCNN, seed=args.seed, **sizes
    )
    maml_rl.train(cfg, Path(args.out), overwrite=True, progress=False)

    num_tasks = 3 if args.tiny else 40
    result = maml_rl.evaluate(args.out, num_tasks=num_tasks, num_steps=1, progress=False)
    returns = result.returns["maml"]  # [steps + 1, tasks]
    gain = returns[1] - returns[0]
    half = stats.t.ppf(0.975, len(gain) - 1) * gain.std(ddof=1) / math.sqrt(len(gain))
    print(f"mean return on {num_tasks} held-out goals: {returns[0].mean():.2f} before, "
          f"{returns[1].mean():.2f} after one step")  # fmt: skip
    print(f"post - pre: {gain.mean():+.2f}, 95 % interval [{gain.mean() - half:+.2f}, "
          f"{gain.mean() + half:+.2f}]")  # fmt: skip


if __name__ == "__main__":
    main()
