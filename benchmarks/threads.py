"""Cost of a thread-count-independent TRPO outer step: one ant meta-step on 1 and 2 torch
threads with the CG's inner products by `torch.dot` (before: MKL splits their sums by thread)
and by `maml_rl.trpo.dot` (now: one thread), side by side, and whether the new theta is the
same on both thread counts.

    python benchmarks/threads.py [--env ant-dir] [--repeats 3] [--synthetic]

Samples one meta-batch (pre- and post-update, timed: the sampling share of an iteration) and
optimises from the same theta on it; ``--synthetic`` skips sampling and uses random data of
the config's sizes. Prints the optimisation time per variant and thread count (median of
``--repeats``), the change as a share of the whole iteration (sampling + optimisation), and
the time of one inner product each way.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from maml_rl.runtime import configure_process

configure_process()  # as `maml-rl train` does (maml_rl/runtime.py): before torch is imported

import torch

from maml_rl import machine, trpo
from maml_rl.build import Streams, build
from maml_rl.config import Config, load
from maml_rl.configs import find_config
from maml_rl.maml import TaskData, batch_advantages, collect, draw_seeds, meta_step
from maml_rl.policy import parameters_of
from maml_rl.types import Batch, Params

Dot = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VARIANTS: dict[str, Dot] = {"torch.dot": torch.dot, "trpo.dot": trpo.dot}
"""Before and after: the inner product the CG and the step length use."""


def synthetic(cfg: Config, theta: Params, generator: torch.Generator) -> TaskData:
    """Random data of the config's sizes: T = 100 steps, episodes ending at random steps."""
    steps, tasks, k = 100, cfg.meta_batch_size, cfg.fast_batch_size
    obs_dim, act_dim = theta["mean.0.weight"].shape[1], theta["log_std"].shape[0]

    def batch() -> Batch:
        lengths = torch.randint(10, steps + 1, (tasks, k), generator=generator)
        mask = (torch.arange(steps).view(-1, 1, 1) < lengths).float()
        return Batch(
            torch.randn(steps, tasks, k, obs_dim, generator=generator) * mask[..., None],
            torch.randn(steps, tasks, k, act_dim, generator=generator) * mask[..., None],
            torch.randn(steps, tasks, k, generator=generator) * mask,
            mask,
        )

    pre, post = batch(), batch()
    return TaskData(((pre, batch_advantages(pre, cfg)),), post, batch_advantages(post, cfg))


def dot_time(size: int, threads: int, function: object, calls: int = 2000) -> float:
    """Seconds per inner product of two [size] vectors on `threads` torch threads."""
    a, b = torch.randn(size), torch.randn(size)
    torch.set_num_threads(threads)
    for _ in range(100):
        function(a, b)  # type: ignore[operator]
    start = time.perf_counter()
    for _ in range(calls):
        function(a, b)  # type: ignore[operator]
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ant-dir", help="config name in experiments/")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true", help="random data, no sampling")
    args = parser.parse_args()
    print(f"# machine: {machine.describe()}", flush=True)

    cfg = load(find_config(args.env), {"device": "cpu"})
    streams = Streams.from_seed(cfg.seed)
    family, policy, sampler = build(cfg, streams.policy_init)
    theta = parameters_of(policy)
    sampling = float("nan")
    try:
        if args.synthetic:
            data = synthetic(cfg, theta, torch.Generator().manual_seed(cfg.seed))
        else:
            tasks = family.sample_tasks(cfg.meta_batch_size, streams.tasks)
            seeds = draw_seeds(streams.environments, cfg.num_steps + 1)
            start = time.perf_counter()
            data, _ = collect(sampler, theta, tasks, [cfg.fast_lr] * cfg.num_steps, seeds, cfg)
            sampling = time.perf_counter() - start
    finally:
        sampler.close()
    size = sum(p.numel() for p in theta.values())
    print(
        f"{cfg.env}: N={cfg.meta_batch_size} tasks x K={cfg.fast_batch_size} trajectories, "
        f"policy {list(cfg.hidden_sizes)} ({size} parameters), hvp {cfg.hvp}, "
        f"{'synthetic data' if args.synthetic else f'sampling {sampling:.1f} s'}"
    )

    calls = {"count": 0}
    original_dot = trpo.dot
    times: dict[tuple[str, int], list[float]] = {}
    thetas: dict[tuple[str, int], Params] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up, and is not counted
        for name, function in VARIANTS.items():
            for threads in (1, 2):

                def counted(
                    a: torch.Tensor, b: torch.Tensor, function: Dot = function
                ) -> torch.Tensor:
                    calls["count"] += 1
                    return function(a, b)

                trpo.dot = counted  # meta_step's CG and max_step_length look it up here
                torch.set_num_threads(threads)
                start = time.perf_counter()
                new_theta = meta_step(policy, theta, {}, data, cfg)[0]
                if repeat > 0:
                    times.setdefault((name, threads), []).append(time.perf_counter() - start)
                thetas[(name, threads)] = new_theta
    trpo.dot = original_dot
    per_step = calls["count"] // (4 * (args.repeats + 1))

    header = ("threads", "torch.dot s", "trpo.dot s", "change", "of iteration")
    print(" ".join(f"{h:>13s}" for h in header))
    for threads in (1, 2):
        before = statistics.median(times[("torch.dot", threads)])
        now = statistics.median(times[("trpo.dot", threads)])
        iteration = sampling + now
        row = (
            str(threads),
            f"{before:.3f}",
            f"{now:.3f}",
            f"{100 * (now - before) / before:+.1f} %",
            f"{100 * (now - before) / iteration:+.2f} %",
        )
        print(" ".join(f"{v:>13s}" for v in row))
    for name in VARIANTS:
        same = all(torch.equal(thetas[(name, 1)][n], thetas[(name, 2)][n]) for n in theta)
        worst = max(float((thetas[(name, 1)][n] - thetas[(name, 2)][n]).abs().max()) for n in theta)
        print(f"{name}: new theta on 1 and 2 threads {'identical' if same else 'differs'}"
              f" (largest difference {worst:.1e})")  # fmt: skip
    for threads in (1, 2):
        before = dot_time(size, threads, torch.dot)
        now = dot_time(size, threads, trpo.dot)
        print(
            f"one inner product of {size} floats on {threads} thread(s): torch.dot "
            f"{1e6 * before:.1f} us, trpo.dot {1e6 * now:.1f} us; {per_step} per meta-step"
        )


if __name__ == "__main__":
    main()
