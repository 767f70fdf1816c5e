"""Meta-iteration time of the built-in MLP (closed-form derivative products) against the same
network given as a custom policy (`policy: module:callable`, the generic autograd path), side
by side, split into phases.

    python benchmarks/custom_policy.py [--env navigation] [--rounds 5] [--hvp gauss_newton]

Then one Fisher product of the generic path, forward-mode (fisher.py, the default) against
double backward through the KL's gradient (the fallback), on the last batch.

Both policies start from the same parameters and sample the same tasks with the same seeds
(their batches are equal up to rounding); the rounds alternate between them, and the table
gives the median over rounds (after one warm-up round) of each phase, and the ratio
custom / built-in. Without OMP_NUM_THREADS, torch's threads are torch's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import gymnasium as gym
import torch
from torch import Tensor, nn

from maml_rl import machine
from maml_rl.build import Streams, build
from maml_rl.config import load
from maml_rl.configs import find_config
from maml_rl.curvature import _per_task as per_task_rows
from maml_rl.curvature import _SecondOrder as SecondOrder
from maml_rl.fisher import ForwardModeFisher
from maml_rl.maml import TaskData, collect, draw_seeds, meta_step
from maml_rl.policy import Normal, detach, forward, kl, parameters_of
from maml_rl.policy_adapter import PREFIX
from maml_rl.returns import masked_mean
from maml_rl.types import Params

PHASES = ("sampling", "adaptation_s", "meta_gradient_s", "cg_s", "line_search_s", "total")


class PlainMLP(nn.Module):
    """The built-in Gaussian MLP's network (64x64 tanh, state-independent log-std), written as a
    user would: the algorithm cannot tell it is an MLP, so it takes the generic path."""

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box) -> None:
        super().__init__()
        obs_dim, act_dim = observation_space.shape[0], action_space.shape[0]
        self.mean = nn.Sequential(
            nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, act_dim)
        )
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, observations: Tensor) -> Normal:
        mean = self.mean(observations)
        return Normal(mean, self.log_std.expand_as(mean))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="navigation", help="config name in experiments/")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hvp", default="gauss_newton")
    args = parser.parse_args()
    print(f"# machine: {machine.describe()}", flush=True)

    sys.modules.setdefault("custom_policy_benchmark", sys.modules[__name__])
    cfg = dataclasses.replace(load(find_config(args.env)), hvp=args.hvp)
    custom_cfg = dataclasses.replace(cfg, policy=f"custom_policy_benchmark:{PlainMLP.__name__}")
    runs = {}
    for name, run_cfg in (("built-in", cfg), ("custom", custom_cfg)):
        streams = Streams.from_seed(cfg.seed)
        family, policy, sampler = build(run_cfg, streams.policy_init)
        runs[name] = (family, policy, sampler, streams)
    theta_builtin = parameters_of(runs["built-in"][1])
    thetas = {"built-in": theta_builtin,
              "custom": {PREFIX + k: v.clone() for k, v in theta_builtin.items()}}  # fmt: skip
    print(
        f"{cfg.env}: N={cfg.meta_batch_size} tasks x K={cfg.fast_batch_size} trajectories, "
        f"policy {list(cfg.hidden_sizes)} tanh, hvp {cfg.hvp}, torch threads "
        f"{torch.get_num_threads()}, {args.rounds} rounds after a warm-up"
    )
    times: dict[str, list[dict[str, float]]] = {"built-in": [], "custom": []}
    datas: dict[str, TaskData] = {}
    family = runs["built-in"][0]
    streams = runs["built-in"][3]
    for round_ in range(args.rounds + 1):
        tasks = family.sample_tasks(cfg.meta_batch_size, streams.tasks)
        seeds = draw_seeds(streams.environments, cfg.num_steps + 1)
        for name in ("built-in", "custom") if round_ % 2 == 0 else ("custom", "built-in"):
            _, policy, sampler, _ = runs[name]
            start = time.perf_counter()
            data, _ = collect(
                sampler, thetas[name], tasks, [cfg.fast_lr] * cfg.num_steps, seeds, cfg
            )
            sampling = time.perf_counter() - start
            datas[name] = data
            _, _, info = meta_step(policy, thetas[name], {}, data, cfg)
            total = time.perf_counter() - start
            if round_ > 0:
                times[name].append({"sampling": sampling, **info.timings, "total": total})
    print(f"{'phase':>16s} {'built-in s':>11s} {'custom s':>11s} {'ratio':>7s}")
    for phase in PHASES:
        a, b = (statistics.median(r[phase] for r in times[n]) for n in ("built-in", "custom"))
        print(f"{phase:>16s} {a:11.3f} {b:11.3f} {b / a if a else float('nan'):6.2f}x")
    fisher_products(runs["custom"][1], thetas["custom"], datas["custom"])
    for _, _, sampler, _ in runs.values():
        sampler.close()


def fisher_products(policy: nn.Module, theta: dict[str, Tensor], data: TaskData) -> None:
    """One Fisher product of the generic path, two ways, on the last post-update batch: the
    forward-mode product (fisher.py, the default) and double backward through the KL's
    gradient (the fallback for operations without a forward-mode derivative)."""
    post = data.post
    num_tasks = post.num_tasks
    phi = {k: v.detach().expand(num_tasks, *v.shape).clone() for k, v in theta.items()}
    obs, _, _, weights = per_task_rows(post, torch.zeros_like(post.rewards))
    t = {k: torch.randn_like(v) for k, v in phi.items()}
    forward_mode = ForwardModeFisher(policy, phi, obs, weights)
    leaf = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    with torch.enable_grad():
        dist = forward(policy, leaf, post.observations.movedim(1, 0), per_task=True)
        old = detach(dist)
        kl_n = masked_mean(kl(old, dist), post.step_weights.movedim(1, 0), (1, 2))
        double_backward = SecondOrder(leaf, kl_n)
    timings: dict[str, float] = {}
    outs: dict[str, Params] = {}
    for name, product in (("forward-mode", forward_mode.product),
                          ("double backward", double_backward.product)):  # fmt: skip
        product(t)
        start = time.perf_counter()
        for _ in range(10):
            outs[name] = product(t)
        timings[name] = (time.perf_counter() - start) / 10
    a, b = outs["forward-mode"], outs["double backward"]
    error = max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in a)
    print(f"generic Fisher product: forward-mode {timings['forward-mode'] * 1e3:.1f} ms, "
          f"double backward {timings['double backward'] * 1e3:.1f} ms "
          f"(ratio {timings['double backward'] / timings['forward-mode']:.2f}x; "
          f"largest relative difference {error:.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
