"""Shared test helpers: synthetic trajectory batches and small float64 policies."""

from __future__ import annotations

import importlib.util

from maml_rl.runtime import configure_process

# The test process runs as a run does: the process-wide settings (maml_rl/runtime.py: MKL's
# strict reproducibility mode, passive thread waiting, MUJOCO_GL=egl without a display, the
# allocator) applied before torch and MuJoCo load, so that its samples equal those of Ray
# actors and worker processes, which apply them too, and MuJoCo renders offscreen.
configure_process()

import torch  # noqa: E402

from maml_rl.policy import GaussianMLPPolicy, parameters_of  # noqa: E402
from maml_rl.tasks import available_families  # noqa: E402
from maml_rl.types import Batch, Params  # noqa: E402

# Families of optional extras: the module each needs (without it their tests skip, in
# tests/test_meta_world.py, and the registry-wide tests leave them out).
EXTRA_FAMILIES = {
    "metaworld-ml1": "metaworld",
    "metaworld-ml10": "metaworld",
    "metaworld-ml45": "metaworld",
}


def usable_families() -> list[str]:
    """The registered families, less those of an extra that is not installed."""
    return sorted(
        name
        for name in available_families()
        if name not in EXTRA_FAMILIES or importlib.util.find_spec(EXTRA_FAMILIES[name])
    )


def make_batch(
    seed: int, num_tasks: int = 3, horizon: int = 6, k: int = 4, obs_dim: int = 2, act_dim: int = 2
) -> tuple[Batch, torch.Tensor]:
    """A random float64 Batch [T, N, K, ...] whose episodes end at random steps, and
    random advantages [T, N, K] (zero on masked steps)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, horizon + 1, (num_tasks, k), generator=g)
    mask = (torch.arange(horizon)[:, None, None] < lengths[None]).double()
    batch = Batch(
        observations=torch.randn(horizon, num_tasks, k, obs_dim, generator=g, dtype=torch.float64),
        actions=torch.randn(horizon, num_tasks, k, act_dim, generator=g, dtype=torch.float64),
        rewards=torch.randn(horizon, num_tasks, k, generator=g, dtype=torch.float64) * mask,
        mask=mask,
    )
    advantages = torch.randn(horizon, num_tasks, k, generator=g, dtype=torch.float64) * mask
    return batch, advantages


def make_policy(
    seed: int = 0, obs_dim: int = 2, act_dim: int = 2
) -> tuple[GaussianMLPPolicy, Params]:
    """A small tanh Gaussian policy in float64 and its parameters theta."""
    policy = GaussianMLPPolicy(
        obs_dim,
        act_dim,
        (8, 8),
        "tanh",
        init_std=0.7,
        generator=torch.Generator().manual_seed(seed),
    ).double()
    return policy, parameters_of(policy)
