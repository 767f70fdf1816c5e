"""Sampler throughput against the physics limit and Gymnasium's SyncVectorEnv, in one run.

    python benchmarks/sampler.py [--envs halfcheetah-vel ant-vel] [--n 40] [--k 20]
                                 [--horizon 100] [--repeats 3] [--threads CPUS] [--no-sync]

For each family, with B = N·K environments and H steps, all figures in env steps per second
(one env step = frame_skip MuJoCo steps), best of --repeats with the spread (min..max), and
per CPU second of this process (a figure that other processes' load disturbs less; threads
that spin while waiting count against it):

* physics limit: raw MuJoCo stepping on all cores, one call per env step and no other work:
  (a) a pool of --threads Python threads stepping B MjData in chunks (``mj_step`` releases
  the GIL), (b) ``mujoco.rollout.Rollout`` over all B, one call of
  frame_skip substeps per env step, (c) ``mujoco.batch.Batch`` stepping all B in lock-step.
  The limit is the best of them. Controls are fixed random values ~ N(0, 0.1²); states start
  from the family's reset distribution.
* native env: the family's batch env (each stepper) with random actions, no policy;
* sampler: ``Sampler.sample`` on the ``auto`` backend with a 64x64 tanh Gaussian policy
  evaluated per task (stacked parameters, as after adaptation), counting the valid steps;
* SyncVectorEnv: ``gymnasium.vector.SyncVectorEnv`` of B ``family.make_env()`` with random
  actions (min(H, 20) steps; building B Gymnasium envs takes a while).

The repeats go round-robin over all measurements, so that a change of machine load (other
processes) affects them alike; the ratios use the best of each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import mujoco
import mujoco.rollout
import numpy as np
import torch

from envs.mujoco_batch import (
    CHUNKS_PER_THREAD,
    default_num_threads,
    mujoco_batch,
    resolve_stepper,
)
from maml_rl.policy import GaussianMLPPolicy, parameters_of
from maml_rl.sampler import Sampler
from maml_rl.tasks import make_family


def timed(run: Callable[[], int]) -> tuple[float, float]:
    """Steps per wall second and per CPU second (all threads of this process) of `run`, which
    returns the number of env steps it took."""
    wall, cpu = time.perf_counter(), time.process_time()
    steps = run()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def report(label: str, rates: list[tuple[float, float]]) -> tuple[float, float]:
    """Prints and returns the best wall and CPU rates; the spread is of the wall rates."""
    walls, cpus = [wall for wall, _ in rates], [cpu for _, cpu in rates]
    spread = f"{min(walls):6.0f} .. {max(walls):6.0f}"
    print(f"  {label:<46s} {max(walls):7.0f} ({spread}) {max(cpus):8.0f}", flush=True)
    return max(walls), max(cpus)


class Physics:
    """B simulations of the family's model from its reset distribution, with fixed controls."""

    def __init__(self, family, num_envs: int, seed: int) -> None:
        env = family.make_gym_env().unwrapped
        self.model, self.frame_skip = env.model, int(env.frame_skip)
        env.close()
        batch_env = family.make_batch_env(num_envs, stepper="threads", num_threads=1)
        batch_env.reset(family.sample_tasks(num_envs, np.random.default_rng(seed)), seed=seed)
        self.qpos, self.qvel = batch_env.sim.qpos.copy(), batch_env.sim.qvel.copy()
        batch_env.close()
        rng = np.random.default_rng(seed)
        self.ctrl = np.clip(rng.normal(0.0, 0.1, (num_envs, self.model.nu)), -1.0, 1.0)

    def datas(self) -> list[mujoco.MjData]:
        datas = []
        for qpos, qvel, ctrl in zip(self.qpos, self.qvel, self.ctrl, strict=True):
            data = mujoco.MjData(self.model)
            data.qpos[:], data.qvel[:], data.ctrl[:] = qpos, qvel, ctrl
            mujoco.mj_forward(self.model, data)
            datas.append(data)
        return datas

    def threads(self, horizon: int, num_threads: int) -> Callable[[], int]:
        """A pool of threads steps the MjData in chunks, taken as threads come free, once per
        env step (as the "threads" stepper does, without its copies of the results)."""
        datas, model, frame_skip = self.datas(), self.model, self.frame_skip
        num_chunks = min(len(datas), CHUNKS_PER_THREAD * num_threads)
        chunks = [datas[i::num_chunks] for i in range(num_chunks)]

        def work(chunk: list[mujoco.MjData]) -> None:
            for data in chunk:
                mujoco.mj_step(model, data, nstep=frame_skip)

        def run() -> int:
            with ThreadPoolExecutor(num_threads) as pool:
                for _ in range(horizon):
                    list(pool.map(work, chunks))
            return horizon * len(datas)

        return run

    def batch(self, horizon: int, num_threads: int) -> Callable[[], int]:
        batch = mujoco_batch.Batch(self.model, len(self.qpos), nthread=num_threads)
        batch.qpos, batch.qvel, batch.ctrl = self.qpos, self.qvel, self.ctrl
        batch.forward()

        def run() -> int:
            for _ in range(horizon):
                batch.step(nstep=self.frame_skip)
            return horizon * len(self.qpos)

        return run

    def rollout(self, horizon: int, num_threads: int) -> Callable[[], int]:
        """mujoco.rollout, one call of frame_skip substeps per env step (closed loop)."""
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        datas = self.datas()
        state = np.stack([np.empty(mujoco.mj_stateSize(self.model, spec)) for _ in datas])
        for row, data in zip(state, datas, strict=True):
            mujoco.mj_getState(self.model, data, row, spec)
        del datas[num_threads:]  # rollout needs one MjData per thread
        control = np.repeat(self.ctrl[:, None], self.frame_skip, axis=1)
        out = np.empty((len(state), self.frame_skip, state.shape[1]))
        roller = mujoco.rollout.Rollout(nthread=num_threads)

        def run() -> int:
            nonlocal state
            for _ in range(horizon):
                roller.rollout(self.model, datas, state, control, state=out)
                state = out[:, -1].copy()
            return horizon * len(state)

        return run


def native_env(family, num_envs: int, horizon: int, stepper: str, threads: int) -> Callable:
    env = family.make_batch_env(num_envs, stepper=stepper, num_threads=threads)
    tasks = family.sample_tasks(num_envs, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    actions = rng.normal(0.0, 1.0, (horizon, num_envs, env.action_space.shape[0]))

    def run() -> int:
        env.reset(tasks, seed=0)
        alive = np.ones(num_envs, dtype=bool)
        steps = 0
        for t in range(horizon):
            steps += int(alive.sum())
            _, _, terminated, truncated = env.step(actions[t])
            alive &= ~(terminated | truncated)
        return steps

    return run


def sampler_run(family, n: int, k: int) -> tuple[Callable[[], int], Sampler]:
    obs_dim, act_dim = family.observation_space.shape[0], family.action_space.shape[0]
    policy = GaussianMLPPolicy(obs_dim, act_dim, (64, 64), "tanh")
    theta = parameters_of(policy)
    phi = {name: p.expand(n, *p.shape).clone() for name, p in theta.items()}
    sampler = Sampler(family, policy, k)
    tasks = family.sample_tasks(n, np.random.default_rng(0))
    seeds = iter(range(10**6))

    def run() -> int:
        return sampler.sample(phi, tasks, seed=next(seeds), per_task=True).num_steps

    return run, sampler


def sync_vector_env(family, num_envs: int, steps: int) -> Callable[[], int]:
    envs = gym.vector.SyncVectorEnv([family.make_env] * num_envs)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(steps)]

    def run() -> int:
        for action in actions:
            envs.step(action)
        return steps * num_envs

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["halfcheetah-vel", "ant-vel"])
    parser.add_argument("--n", type=int, default=40, help="tasks")
    parser.add_argument("--k", type=int, default=20, help="trajectories per task")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_num_threads())
    parser.add_argument("--no-sync", action="store_true", help="skip SyncVectorEnv")
    args = parser.parse_args()
    num_envs, threads, horizon = args.n * args.k, args.threads, args.horizon
    print(
        f"N={args.n} K={args.k} H={horizon}: {num_envs} envs, {threads} threads, "
        f"torch threads {torch.get_num_threads()} (1 while sampling), mujoco {mujoco.__version__}"
    )
    for name in args.envs:
        family = make_family(name, {"max_episode_steps": horizon})
        print(f"{name} ({type(family).__name__}, frame_skip {family.make_kwargs['frame_skip']})")
        physics = Physics(family, num_envs, seed=0)
        runs: dict[str, Callable[[], int]] = {
            f"limit: mj_step in {threads} threads": physics.threads(horizon, threads),
            f"limit: mujoco.rollout, {threads} threads": physics.rollout(horizon, threads),
        }
        if mujoco_batch is not None:
            runs[f"limit: mujoco.batch, {threads} threads"] = physics.batch(horizon, threads)
        for stepper in ("batch", "threads"):
            env_run = native_env(family, num_envs, horizon, stepper, threads)
            runs[f"native env, stepper {stepper}, random actions"] = env_run
        sample, sampler = sampler_run(family, args.n, args.k)
        sample()  # builds the environments
        stepper = resolve_stepper("auto", family.contact_forces)
        sampler_label = f"Sampler.sample (auto: {stepper}), policy 64x64"
        runs[sampler_label] = sample
        if not args.no_sync:
            runs["gymnasium SyncVectorEnv, random actions"] = sync_vector_env(
                family, num_envs, min(horizon, 20)
            )
        # round-robin over the repeats, so that a change of load affects every figure alike
        rates: dict[str, list[tuple[float, float]]] = {label: [] for label in runs}
        for _ in range(args.repeats):
            for label, run in runs.items():
                rates[label].append(timed(run))
        print(f"  {'env steps/s':<46s} {'wall, best (spread)':>26s} {'per CPU-s':>8s}")
        best = {label: report(label, values) for label, values in rates.items()}
        sampler.close()
        limits = [rate for label, rate in best.items() if label.startswith("limit")]
        wall_limit, cpu_limit = max(w for w, _ in limits), max(c for _, c in limits)
        sampled_wall, sampled_cpu = best[sampler_label]
        median = statistics.median(w for w, _ in rates[sampler_label])
        line = (
            f"  sampler / physics limit = {sampled_wall / wall_limit:.2f} wall "
            f"(median {median / wall_limit:.2f}), {sampled_cpu / cpu_limit:.2f} per CPU-s"
        )
        if not args.no_sync:
            sync_wall, sync_cpu = best["gymnasium SyncVectorEnv, random actions"]
            line += (
                f"; sampler / SyncVectorEnv = {sampled_wall / sync_wall:.2f} wall, "
                f"{sampled_cpu / sync_cpu:.2f} per CPU-s"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
