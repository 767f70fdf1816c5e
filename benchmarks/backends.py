"""Environment steps per second of the sampler's Gymnasium backends, for any task family.

    python benchmarks/backends.py --env NAME [--env-kwargs JSON] [--tasks 4] [--trajectories 5]
        [--backends sync,async,procs,ray,procs:100] [--rounds 3] [--ray-actors 2]

For each backend a `maml_rl.sampler.Sampler` (``ray``: a `maml_rl.ray_sampler.RaySampler` of
--ray-actors actors of 1 CPU each, whose actors sample on the ``auto`` backend) samples one
full batch of N = --tasks tasks x K = --trajectories episodes, every episode running until it
terminates or reaches the family's max_episode_steps, with a random Gaussian (or categorical)
64x64 tanh policy at initialisation (shared parameters). Throughput is the batch's valid
environment steps (mask sum) per second of `Sampler.sample`. A first untimed sample per backend
starts its workers (its time is the "start-up" column); then --rounds timed rounds go over the
backends in a rotating order, so that a change of machine load affects them alike. The table
gives the median steps/s per backend, its spread (min..max) and its ratio to sync.
``BACKEND:M`` is that backend with ``max_envs`` M: at most M environments at once, the tasks
sampled in chunks (what holding fewer environments costs in speed).

torch runs on one intra-op thread (``torch.set_num_threads(1)``, printed): the policy is small
and the environment workers need the cores. ``procs`` uses one worker process per CPU of this
process. ``ray`` is skipped, with a note, when Ray is not installed. Environments that step in
microseconds (2D navigation) are faster in-process (``sync``) than behind any pipe; the process
backends pay off for slow Python environments (Meta-World: ~1 ms a step) on several cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from typing import Any

from maml_rl.runtime import configure_process

configure_process()  # as `maml-rl train` does (maml_rl/runtime.py): before torch is imported

import numpy as np
import torch

from maml_rl import machine
from maml_rl.policy import build_policy, parameters_of
from maml_rl.process_env import available_cpus
from maml_rl.sampler import Sampler, TrajectorySampler
from maml_rl.tasks import TaskFamily, make_family
from maml_rl.vector import BACKENDS, horizon_of, resolved_backend

CHOICES = (*(b for b in BACKENDS if b != "auto"), "ray")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", required=True, help="a registered family or module:Class")
    parser.add_argument("--env-kwargs", default="{}", help="the family's keyword arguments (JSON)")
    parser.add_argument("--tasks", type=int, default=4, help="N, tasks per batch")
    parser.add_argument("--trajectories", type=int, default=5, help="K, episodes per task")
    parser.add_argument("--backends", default="sync,async,procs,ray", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="timed samples per backend")
    parser.add_argument("--ray-actors", type=int, default=2, help="actors of the ray sampler")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b.partition(":")[0] not in CHOICES]
    if unknown:
        parser.error(f"unknown backends {unknown}; choose among {list(CHOICES)}")
    for spec in args.backends:
        cap = spec.partition(":")[2]
        if cap and not (cap.isdigit() and int(cap) >= args.trajectories):
            parser.error(f"{spec}: max_envs must be an integer >= --trajectories")
    if min(args.tasks, args.trajectories, args.rounds, args.ray_actors) < 1:
        parser.error("--tasks, --trajectories, --rounds and --ray-actors must be >= 1")
    return args


def make_sampler(
    family: TaskFamily, policy: torch.nn.Module, spec: str, k: int, ray_actors: int
) -> TrajectorySampler:
    """The sampler of `spec`: a backend, or BACKEND:M for one with max_envs M."""
    backend, _, cap = spec.partition(":")
    max_envs = int(cap) if cap else None
    if backend == "ray":
        from maml_rl.ray_sampler import RaySampler

        return RaySampler(family, policy, k, num_actors=ray_actors, actor_cpus=1, max_envs=max_envs)
    return Sampler(family, policy, k, backend=backend, policy_threads=1, max_envs=max_envs)


def timed_sample(
    sampler: TrajectorySampler, params: Any, tasks: list[Any], seed: int
) -> tuple[float, int]:
    """(seconds, valid environment steps) of one `sample` call."""
    start = time.perf_counter()
    batch = sampler.sample(params, tasks, seed, per_task=False)
    return time.perf_counter() - start, int(batch.mask.sum().item())


def main() -> None:
    args = parse_args()
    print(f"# machine: {machine.describe()}", flush=True)
    torch.set_num_threads(1)
    family = make_family(args.env, json.loads(args.env_kwargs))
    backends = list(args.backends)
    if importlib.util.find_spec("ray") is None and any(b.startswith("ray") for b in backends):
        print("note: ray is not installed (pip install 'ray>=2.9'); skipping the ray backend")
        backends = [b for b in backends if not b.startswith("ray")]
    if not backends:
        return
    probe = family.make_env()
    observation_space, action_space = probe.observation_space, probe.action_space
    probe.close()
    policy = build_policy(
        observation_space,
        action_space,
        (64, 64),
        "tanh",
        init_std=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    params = parameters_of(policy)
    tasks = family.sample_tasks(args.tasks, np.random.default_rng(0))
    num_envs = args.tasks * args.trajectories
    print(
        f"{args.env}: N={args.tasks} tasks x K={args.trajectories} episodes = {num_envs} envs, "
        f"max_episode_steps {horizon_of(family)}; torch.set_num_threads(1) "
        f"(torch threads: {torch.get_num_threads()}); {available_cpus()} CPUs "
        f"(procs: {min(available_cpus(), num_envs)} worker processes)"
    )
    if any(b.startswith("ray") for b in backends):
        inner = resolved_backend(family, "auto")
        print(f"ray: {args.ray_actors} actors x 1 CPU, each sampling on auto = {inner}")

    samplers: dict[str, TrajectorySampler] = {}
    startup: dict[str, float] = {}
    rates: dict[str, list[float]] = {b: [] for b in backends}
    steps: dict[str, int] = {}
    try:
        for backend in backends:
            start = time.perf_counter()
            samplers[backend] = make_sampler(
                family, policy, backend, args.trajectories, args.ray_actors
            )
            timed_sample(samplers[backend], params, tasks, seed=0)  # starts the workers
            startup[backend] = time.perf_counter() - start
        for r in range(args.rounds):
            shift = r % len(backends)
            for backend in backends[shift:] + backends[:shift]:
                seconds, count = timed_sample(samplers[backend], params, tasks, seed=1 + r)
                rates[backend].append(count / seconds)
                steps[backend] = count
    finally:
        for sampler in samplers.values():
            sampler.close()

    medians = {b: statistics.median(rates[b]) for b in backends}
    header = f"{'backend':<10} {'steps/s':>10} {'min..max':>21} {'vs sync':>8} {'start-up s':>11}"
    print(header)
    print("-" * len(header))
    for backend in backends:
        spread = f"{min(rates[backend]):.0f}..{max(rates[backend]):.0f}"
        ratio = f"{medians[backend] / medians['sync']:.2f}x" if "sync" in medians else "-"
        print(
            f"{backend:<10} {medians[backend]:>10.0f} {spread:>21} {ratio:>8} "
            f"{startup[backend]:>11.2f}"
        )
    print(f"(median of {args.rounds} rounds; steps per batch: {steps[backends[0]]})")


if __name__ == "__main__":  # the process backends' workers import this module as __mp_main__
    main()
