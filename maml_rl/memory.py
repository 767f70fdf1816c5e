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
    environments N·K · E                                  one Gymnasium environment per
                                                          trajectory (backends sync, async,
                                                          procs), E bytes each; with
                                                          max_envs, the c·K of one chunk of
                                                          c tasks (`sampler.task_chunk_size`)
    baseline fit 3 · N·K·H · (2D + 4) · 8                 a batch's linear-baseline features
                                                          in float64 and the two copies its
                                                          Gram product makes (`baseline.fit`)

The meta-step's caches and a baseline fit are not held at once (the fits run while batches are
collected, before the meta-step), so the estimate counts the larger of the two: batches +
parameters + environments + max(activations, baseline fit). The fit is the larger where the
observations are wide against the policy's hidden units (the ant's 105 numbers, a 64×64
policy, in an evaluation).

An evaluation (or a render) adapts on detached parameters, first-order, and keeps only the
S + 1 batches: its activations are those of one batch's forward and backward pass,
N·K·H · Σ h_l · 4 · b, and its parameters (S + 1) · N · P · 2 · b (the adapted ones and a
gradient).

E is measured (`environment_bytes`: the resident memory that building and resetting a few more
environments adds); native batch environments (2D navigation, the MuJoCo families) hold a few
arrays per environment and count as 0. Meta-World's environments hold about 20–28 MiB each, so
that ML45's 450 take about 12 GiB beside the meta-step's 15, and `max_envs: 45` about 1.2.

It is an estimate of the order of magnitude: the measured peaks of the shipped configs above
their interpreters are 1.0–1.9 times it (`benchmarks/memory.py`, docs/performance.md); only
sizes whose estimate exceeds the memory available are refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

from maml_rl.errors import ResourceError

GIB = 2**30


def address_space_left() -> int | None:
    """What `ulimit -v` (RLIMIT_AS) leaves this process beyond what it has mapped (VmSize in
    /proc/self/status); None where it is unlimited or unknown."""
    try:
        import resource

        limit, _ = resource.getrlimit(resource.RLIMIT_AS)
        if limit == resource.RLIM_INFINITY:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, limit - int(line.split()[1]) * 1024)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> int | None:
    """The memory a run may use: MemAvailable from /proc/meminfo (Linux), else physical
    memory, and at most what `ulimit -v` leaves (`address_space_left`); None if unknown."""
    limits = [n for n in (_physical_available(), address_space_left()) if n is not None]
    return min(limits, default=None)


def _physical_available() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else physical memory; None if unknown."""
    return meminfo_bytes("MemAvailable")


MEMINFO = Path("/proc/meminfo")


def meminfo_bytes(key: str, meminfo: Path = MEMINFO) -> int | None:
    """/proc/meminfo's `key` ("MemAvailable", "MemTotal") in bytes (Linux), else the physical
    memory (pages × page size); None if neither is known."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith(f"{key}:"):
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


@dataclass(frozen=True)
class RunSizes:
    """The sizes of one meta-iteration (training) or one evaluation."""

    obs_dim: int
    act_dim: int
    hidden_sizes: tuple[int, ...]
    horizon: int
    num_tasks: int
    trajectories: int
    num_steps: int
    itemsize: int
    env_bytes: int = 0
    """E: the memory of one environment where the sampler holds one per trajectory, else 0."""
    meta_step: bool = True
    """A training iteration (the meta-step's caches); False: an evaluation's adaptation."""
    envs_held: int | None = None
    """The environments the sampler holds at once where `max_envs` caps them; None: N·K."""

    def __str__(self) -> str:
        width = "x".join(str(h) for h in self.hidden_sizes) or "linear"
        return (
            f"{self.num_tasks:,} tasks x {self.trajectories:,} trajectories x "
            f"{self.horizon:,} steps x {self.num_steps + 1} batches with a {width} policy"
        )


def environments_held(sizes: RunSizes) -> int:
    """The environments the sampler holds: N·K, or fewer where `max_envs` caps them."""
    every = sizes.num_tasks * sizes.trajectories
    return every if sizes.envs_held is None else min(every, sizes.envs_held)


def environments_bytes(sizes: RunSizes) -> int:
    """N·K · E (or the capped count · E): the environments' share of the estimate, in bytes."""
    return environments_held(sizes) * sizes.env_bytes


def estimate_bytes(sizes: RunSizes) -> int:
    """The estimate of the module docstring, in bytes."""
    s = sizes
    samples = s.num_tasks * s.trajectories * s.horizon
    batches = (s.num_steps + 1) * samples * (s.obs_dim + s.act_dim + 6) * s.itemsize
    per_task = s.num_tasks * num_parameters(s.obs_dim, s.act_dim, s.hidden_sizes) * s.itemsize
    if s.meta_step:
        activations = (s.num_steps + 1) * samples * sum(s.hidden_sizes) * 8 * s.itemsize
        params = (s.num_steps + 2) * per_task * 6
    else:
        activations = samples * sum(s.hidden_sizes) * 4 * s.itemsize
        params = (s.num_steps + 1) * per_task * 2
    fit = 3 * samples * (2 * s.obs_dim + 4) * 8
    return batches + max(activations, fit) + params + environments_bytes(s)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux: /proc/self/statm); None where unknown."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class TreeMemory(NamedTuple):
    """Resident memory of a process and of each of its descendants, in bytes."""

    own: int
    descendants: tuple[int, ...] = ()

    @property
    def tree(self) -> int:
        """The process and all its descendants."""
        return self.own + sum(self.descendants)


def process_tree_bytes(pid: int) -> TreeMemory | None:
    """The resident memory of process `pid` and of it with all its descendants (Linux: /proc);
    None where `pid` is gone or /proc is not there. Memory that two processes share
    (a forked worker's pages not yet written) is counted in each, as `ps` does: the tree's
    figure is an upper bound of what it takes from the machine."""
    page = os.sysconf("SC_PAGE_SIZE")
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # ended while we looked
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after the command's name
        children.setdefault(parent, []).append(int(entry))

    def resident(p: int) -> int:
        try:
            return int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            return 0

    own = resident(pid)
    if not own:
        return None
    descendants, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        descendants.append(resident(child))
        stack.extend(children.get(child, []))
    return TreeMemory(own, tuple(descendants))


def environment_bytes(make_one: Callable[[int], object], count: int = 4) -> int:
    """E: the resident memory one more environment adds, measured in this process.

    `make_one(i)` builds and resets environment i (i = 0..count) and returns it; all are kept
    until the measurement ends and then closed. The first one absorbs one-time costs (imports,
    caches); then the heap's free memory goes back to the system (`release_free_memory`), so
    that the next ones cannot hide in memory freed earlier, and E = (resident after the last −
    resident before them) / count, at least 0; 0 where resident memory is unknown."""
    from maml_rl.allocator import release_free_memory

    environments = [make_one(0)]
    try:
        release_free_memory()
        before = resident_bytes()
        environments += [make_one(i) for i in range(1, count + 1)]
        after = resident_bytes()
    finally:
        for env in environments:
            close = getattr(env, "close", None)
            if callable(close):
                close()
    if before is None or after is None:
        return 0
    return max(0, (after - before) // count)


def check_fits(what: str, needed: int, available: int | None = None, hint: str = "") -> None:
    """Raise ResourceError (one line) if `needed` bytes exceed the memory available; `hint`
    names a way to make it smaller."""
    available = available_bytes() if available is None else available
    if available is not None and needed > available:
        raise ResourceError(
            f"{what} needs about {needed / GIB:,.1f} GiB (estimate), more than the "
            f"{available / GIB:,.1f} GiB of memory available here; make it smaller"
            + (f" ({hint})" if hint else "")
        )


def check_run(sizes: RunSizes, available: int | None = None) -> None:
    """`check_fits` for a run of these sizes (naming the environments' share where they count)."""
    what = str(sizes)
    if sizes.env_bytes:
        count = environments_held(sizes)
        what += (
            f" and {count:,} environments of {sizes.env_bytes / 2**20:,.1f} MiB"
            f" ({environments_bytes(sizes) / GIB:,.1f} GiB)"
        )
    hint = "max_envs caps the environments held at once" if sizes.env_bytes else ""
    check_fits(what, estimate_bytes(sizes), available, hint)
