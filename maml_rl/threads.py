"""torch's intra-op thread count for the optimisation phase, chosen from the load on the CPUs.

No fixed count is the fast one both alone and beside other work. On this project's 2-core
machine (benchmarks/speed.py, navigation, `experiments/results/speed/`), one meta-iteration
took 0.99 s on 2 threads against 1.79 s on 1 alone, but 9.32 s on 2 against 2.19 s on 1 beside
a second identical run (21.8 s against 1.79 s beside a busy loop): two OpenMP threads per
process on oversubscribed cores wait for each other at the end of every parallel region,
hundreds of times per CG product.

`AutoThreads` measures, over each optimisation phase (when this process's sampler threads and
workers are idle), how much CPU time other processes took on the CPUs this process may use,

    others = (Δ busy time of those CPUs) - (Δ CPU time of this process)       [core-seconds]
    threads = clamp(round(cores - others / Δ wall time), 1, cores)

and gives torch that many threads for the next phase. Alone it keeps every core; beside a run
that keeps a core busy it drops to one, and comes back when the other run ends. Where the
kernel's per-CPU counters (``/proc/stat``) are not readable it leaves torch's setting alone.

The count changes the speed, never the result: a run resumed under another load stays
bit-identical. The two sums torch split by thread run on one thread, and nothing else does:

- the baseline's fit (baseline.py, `torch_threads(1)`): its normal equations reduce over
  every step of a task, up to 1e-4 in float32 weights on the ant;
- the inner products of the TRPO step's conjugate gradient and step length (`trpo.dot`): MKL's
  dot product splits its sum by thread, about 4e-8 in the parameters per ant meta-step.

The rest of the outer step (adaptation, meta-gradient, Hessian-vector products in all three
modes, line search) was checked op by op on an ant meta-step (105 observations, 64x64, 40
tasks x 20 trajectories x 100 steps, float32, with and without MKL_CBWR): the same bits on 1
and 2 threads. Running the whole optimisation phase on a fixed count would also do, at the
price of the idle machine's second core; one thread for the dot products costs a few µs each
(benchmarks/threads.py). tests/test_threads.py holds the ant-sized test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

PROC_STAT = Path("/proc/stat")


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `num_threads` inside the block (None: unchanged)."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_seconds(cpus: list[int], stat: Path = PROC_STAT) -> float | None:
    """Busy time of `cpus` since boot, in seconds: user + nice + system + irq + softirq + steal
    of their ``cpuN`` lines (guest time is inside user); None if the file is unreadable."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{i}" for i in cpus}
    ticks = 0
    found = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
            ticks += user + nice + system + irq + softirq + steal
            found += 1
    if found != len(wanted):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def threads_for(cores: int, others: float, wall: float) -> int:
    """clamp(round(cores - others / wall), 1, cores): the cores other processes left free."""
    if wall <= 0:
        return cores
    return max(1, min(cores, round(cores - others / wall)))


class AutoThreads:
    """Around each optimisation phase: `start()`, then `stop()` sets torch's thread count for
    the next phase from the CPU time other processes used during this one (module docstring).

    cores: the most threads to use (default: the CPUs this process may run on).
    """

    def __init__(self, cores: int | None = None, stat: Path = PROC_STAT) -> None:
        self.cpus = allowed_cpus()
        self.cores = cores or len(self.cpus)
        self.stat = stat
        self.threads = torch.get_num_threads()
        self._start: tuple[float, float, float] | None = None

    def start(self) -> None:
        """Snapshot the counters at the start of a phase."""
        busy = busy_seconds(self.cpus, self.stat)
        self._start = None if busy is None else (busy, time.process_time(), time.perf_counter())

    def stop(self) -> int:
        """Set and return torch's threads for the next phase (unchanged where unmeasurable)."""
        busy = busy_seconds(self.cpus, self.stat)
        if self._start is None or busy is None:
            return self.threads
        busy0, own0, wall0 = self._start
        others = max(0.0, (busy - busy0) - (time.process_time() - own0))
        self.threads = threads_for(self.cores, others, time.perf_counter() - wall0)
        torch.set_num_threads(self.threads)
        return self.threads
