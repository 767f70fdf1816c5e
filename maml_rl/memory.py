"""An up-front estimate of a run's memory, so that sizes that cannot fit fail in one line before
anything is allocated instead of growing until the OS stops the process.

For a policy with P parameters (hidden sizes h_1..h_L) on N tasks × K trajectories × H steps
per batch, S inner steps (S + 1 batches), observations of D and actions of A numbers, in
floats of b bytes:

    batches      (S + 1) · N·K·H · (D + A + 6) · b        observations, actions, rewards, mask,
                                                          weights, advantages (and their returns)
    activations  (S + 1) · N·K·H · Σ h_l · 8 · b          what the meta-step caches per sample
                                                          and hidden unit (activations, their
                                                          derivatives, adjoints, tangents)
    parameters   (S + 2) · N · P · 6 · b                  per-task parameters, gradients, CG
                                                          vectors

It is an estimate of the order of magnitude (measured peaks of the shipped configs are within
a factor 2 of it); only sizes whose estimate exceeds the memory available are refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from maml_rl.errors import ResourceError

GIB = 2**30


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else physical memory; None if unknown."""
    meminfo = Path("/proc/meminfo")
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def num_parameters(obs_dim: int, act_dim: int, hidden_sizes: Sequence[int]) -> int:
    """Weights and biases of the MLP plus one log-std per action dimension."""
    sizes = [obs_dim, *hidden_sizes, act_dim]
    return sum((i + 1) * o for i, o in pairwise(sizes)) + act_dim


def estimate_bytes(
    obs_dim: int,
    act_dim: int,
    hidden_sizes: Sequence[int],
    horizon: int,
    num_tasks: int,
    trajectories: int,
    num_steps: int,
    itemsize: int,
) -> int:
    """The estimate of the module docstring, in bytes."""
    samples = num_tasks * trajectories * horizon
    batches = (num_steps + 1) * samples * (obs_dim + act_dim + 6) * itemsize
    activations = (num_steps + 1) * samples * sum(hidden_sizes) * 8 * itemsize
    parameters = (num_steps + 2) * num_tasks * num_parameters(obs_dim, act_dim, hidden_sizes)
    return batches + activations + parameters * 6 * itemsize


def check_fits(what: str, needed: int, available: int | None = None) -> None:
    """Raise ResourceError (one line) if `needed` bytes exceed the memory available."""
    available = available_bytes() if available is None else available
    if available is not None and needed > available:
        raise ResourceError(
            f"{what} needs about {needed / GIB:,.1f} GiB (estimate), more than the "
            f"{available / GIB:,.1f} GiB of memory available here; make it smaller"
        )


def describe(
    hidden_sizes: Sequence[int], num_tasks: int, trajectories: int, horizon: int, num_steps: int
) -> str:
    """The sizes that enter the estimate, for the error message."""
    width = "x".join(str(h) for h in hidden_sizes) or "linear"
    return (
        f"{num_tasks:,} tasks x {trajectories:,} trajectories x {horizon:,} steps "
        f"x {num_steps + 1} batches with a {width} policy"
    )


def check_run(
    obs_dim: int,
    act_dim: int,
    hidden_sizes: Sequence[int],
    horizon: int,
    num_tasks: int,
    trajectories: int,
    num_steps: int,
    itemsize: int,
    available: int | None = None,
) -> None:
    """`check_fits` for one meta-iteration (training) or one evaluation of these sizes."""
    needed = estimate_bytes(
        obs_dim, act_dim, hidden_sizes, horizon, num_tasks, trajectories, num_steps, itemsize
    )
    what = describe(hidden_sizes, num_tasks, trajectories, horizon, num_steps)
    check_fits(what, needed, available)
