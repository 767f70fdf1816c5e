"""Sampler throughput against the physics limit and Gymnasium's SyncVectorEnv, in one run.

    python benchmarks/sampler.py [--envs halfcheetah-vel ant-vel] [--n 40] [--k 20]
                                 [--horizon 100] [--repeats 3] [--threads CPUS] [--no-sync]
                                 [--sampler local|ray|warp] [--device cuda]

For each family, with B = N·K environments and H steps, all figures in env steps per second
(one env step = frame_skip MuJoCo steps), best of --repeats with the spread (min..max), and
per CPU second of this process (a figure that other processes' load disturbs less; threads
that spin while waiting count against it):

* physics limit: raw MuJoCo stepping on all cores, one call per env step and no other work,
  replaying open-loop the robot controls of one recorded ``Sampler.sample`` (a 64x64 tanh
  Gaussian policy at initialisation, per-task parameters) from the same initial states, so the
  physics is exactly the sampler's (contacts, solver iterations): (a) a pool of --threads
  Python threads stepping B MjData in chunks (``mj_step`` releases the GIL), (b)
  ``mujoco.rollout.Rollout``, one call of frame_skip substeps per env step, (c)
  ``mujoco.batch.Batch`` stepping all B in lock-step. The limit is the best of them. For
  families that read contact forces (Ant), one more row adds the ``mj_rnePostConstraint`` per
  env step that Gymnasium's environment runs (the limit of that environment as defined);
* native env: the family's batch env (each stepper) replaying the recorded policy actions;
* sampler: ``Sampler.sample`` on the ``auto`` backend with that policy, counting valid steps;
* SyncVectorEnv: ``gymnasium.vector.SyncVectorEnv`` of B ``family.make_env()`` with random
  actions (min(H, 20) steps; building B Gymnasium envs takes a while).

With ``--sampler ray``: the local sampler beside `RaySampler` on a local Ray instance of
--threads CPUs with 1 actor (all CPUs) and with 2 actors (half each), sampling the post-update
phase (per-task parameters); prints throughput, ratios to the local sampler, the bytes sent
and received per phase (per-task phi, and shared theta) and the time Ray adds per phase.

With ``--sampler warp``: ``Sampler.sample`` on the warp backend (MuJoCo Warp, all N·K worlds
on --device, default cuda when there is one) beside the native C backend with the policy on
the same device and with the policy on the CPU, and the warp env alone stepping zero actions;
the per-task-parameter phase of a 64x64 policy, steps per wall second and the ratios. The
first call of each compiles (Warp's kernels, the CUDA graph) and is not timed.

The repeats go round-robin over all measurements, so that a change of machine load (other
processes) affects them alike; the ratios use the best of each.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from maml_rl.runtime import configure_process

configure_process()  # as `maml-rl train` does (maml_rl/runtime.py): before torch is imported

import gymnasium as gym
import mujoco
import mujoco.rollout
import numpy as np
import torch

from maml_rl import machine
from maml_rl.policy import GaussianMLPPolicy, parameters_of
from maml_rl.sampler import Sampler, TrajectorySampler
from maml_rl.tasks import make_family
from maml_rl.types import Batch, Params
from maml_rl_envs.mujoco_base import MujocoFamily
from maml_rl_envs.mujoco_batch import (
    CHUNKS_PER_THREAD,
    box_space,
    default_num_threads,
    mujoco_batch,
    mujoco_env,
    resolve_stepper,
)


def timed(run: Callable[[], int]) -> tuple[float, float]:
    """Steps per wall second and per CPU second (all threads of this process) of `run`, which
    returns the number of env steps it took."""
    wall, cpu = time.perf_counter(), time.process_time()
    steps = run()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def report(label: str, rates: list[tuple[float, float]], cpu: bool = True) -> tuple[float, float]:
    """Prints and returns the best wall and CPU rates; the spread is of the wall rates.
    cpu=False leaves the CPU figure out of the line (work done in other processes)."""
    walls, cpus = [wall for wall, _ in rates], [cpu for _, cpu in rates]
    spread = f"{min(walls):6.0f} .. {max(walls):6.0f}"
    per_cpu = f"{max(cpus):8.0f}" if cpu else ""
    print(f"  {label:<46s} {max(walls):7.0f} ({spread}) {per_cpu}", flush=True)
    return max(walls), max(cpus)


class Physics:
    """B simulations of the family's model replaying recorded controls [H, B, nu] from
    recorded initial states qpos [B, nq], qvel [B, nv]."""

    def __init__(
        self, family: MujocoFamily, qpos: np.ndarray, qvel: np.ndarray, controls: np.ndarray
    ) -> None:
        env = mujoco_env(family.make_gym_env())
        self.model, self.frame_skip = env.model, int(env.frame_skip)
        env.close()
        self.qpos, self.qvel, self.controls = qpos, qvel, controls

    def datas(self) -> list[mujoco.MjData]:
        datas = []
        for qpos, qvel in zip(self.qpos, self.qvel, strict=True):
            data = mujoco.MjData(self.model)
            data.qpos[:], data.qvel[:] = qpos, qvel
            mujoco.mj_forward(self.model, data)
            datas.append(data)
        return datas

    def threads(self, num_threads: int, post_constraint: bool = False) -> Callable[[], int]:
        """A pool of threads steps the MjData in chunks, taken as threads come free, once per
        env step (as the "threads" stepper does, without its copies of the results)."""
        model, frame_skip, controls = self.model, self.frame_skip, self.controls
        datas = self.datas()
        num_chunks = min(len(datas), CHUNKS_PER_THREAD * num_threads)
        chunks = [np.arange(i, len(datas), num_chunks) for i in range(num_chunks)]

        def run() -> int:
            for data, qpos, qvel in zip(datas, self.qpos, self.qvel, strict=True):
                data.qpos[:], data.qvel[:] = qpos, qvel
            with ThreadPoolExecutor(num_threads) as pool:
                for ctrl in controls:

                    def work(rows: np.ndarray, ctrl: np.ndarray = ctrl) -> None:
                        for i in rows:
                            data = datas[i]
                            data.ctrl[:] = ctrl[i]
                            mujoco.mj_step(model, data, nstep=frame_skip)
                            if post_constraint:
                                mujoco.mj_rnePostConstraint(model, data)

                    list(pool.map(work, chunks))
            return controls.shape[0] * len(datas)

        return run

    def batch(self, num_threads: int) -> Callable[[], int]:
        batch = mujoco_batch.Batch(self.model, len(self.qpos), nthread=num_threads)
        ctrl = batch.bind("ctrl")

        def run() -> int:
            batch.qpos, batch.qvel = self.qpos, self.qvel
            batch.forward()
            for controls in self.controls:
                ctrl[:] = controls
                batch.step(nstep=self.frame_skip)
            return self.controls.shape[0] * len(self.qpos)

        return run

    def rollout(self, num_threads: int) -> Callable[[], int]:
        """mujoco.rollout, one call of frame_skip substeps per env step (closed loop)."""
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        datas = self.datas()
        initial = np.stack([np.empty(mujoco.mj_stateSize(self.model, spec)) for _ in datas])
        for row, data in zip(initial, datas, strict=True):
            mujoco.mj_getState(self.model, data, row, spec)
        del datas[num_threads:]  # rollout needs one MjData per thread
        controls = np.repeat(self.controls[:, :, None], self.frame_skip, axis=2)
        out = np.empty((len(initial), self.frame_skip, initial.shape[1]))
        roller = mujoco.rollout.Rollout(nthread=num_threads)

        def run() -> int:
            state = initial
            for control in controls:
                roller.rollout(self.model, datas, state, control, state=out)
                state = out[:, -1].copy()
            return controls.shape[0] * len(state)

        return run


def record(
    family: MujocoFamily, sample: Callable[[int], Batch], num_envs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The initial states and robot controls [H, B, nu] of one sampler run with `seed`."""
    batch = sample(seed)
    env = family.make_batch_env(num_envs, stepper="threads", num_threads=1)
    tasks = family.sample_tasks(num_envs, np.random.default_rng(0))
    env.reset(tasks, seed=seed)
    qpos, qvel = env.sim.qpos.copy(), env.sim.qvel.copy()
    env.close()
    robot = family.make_gym_env()
    box = box_space(robot.action_space, "actions")
    low, high = box.low, box.high
    robot.close()
    actions = batch.actions.reshape(batch.actions.shape[0], num_envs, -1).double().numpy()
    controls = np.clip(actions.astype(np.float32) / family.action_scale, low, high)
    return qpos, qvel, actions, controls.astype(np.float64)


def native_env(
    family: MujocoFamily, num_envs: int, actions: np.ndarray, stepper: str, threads: int
) -> Callable[[], int]:
    env = family.make_batch_env(num_envs, stepper=stepper, num_threads=threads)
    tasks = family.sample_tasks(num_envs, np.random.default_rng(0))

    def run() -> int:
        env.reset(tasks, seed=0)
        alive = np.ones(num_envs, dtype=bool)
        steps = 0
        for action in actions:
            steps += int(alive.sum())
            _, _, terminated, truncated = env.step(action)
            alive &= ~(terminated | truncated)
        return steps

    return run


def sampler_run(family: MujocoFamily, n: int, k: int) -> tuple[Callable[[int], Batch], Sampler]:
    obs_dim, act_dim = family.observation_space.shape[0], family.action_space.shape[0]
    policy = GaussianMLPPolicy(obs_dim, act_dim, (64, 64), "tanh")
    theta = parameters_of(policy)
    phi = {name: p.expand(n, *p.shape).clone() for name, p in theta.items()}
    sampler = Sampler(family, policy, k)
    tasks = family.sample_tasks(n, np.random.default_rng(0))

    def run(seed: int) -> Batch:
        return sampler.sample(phi, tasks, seed=seed, per_task=True)

    return run, sampler


def sync_vector_env(family: MujocoFamily, num_envs: int, steps: int) -> Callable[[], int]:
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
    parser.add_argument("--sampler", choices=["local", "ray", "warp"], default="local")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"# machine: {machine.describe()}", flush=True)
    if args.sampler == "ray":
        ray_comparison(args)
        return
    if args.sampler == "warp":
        warp_comparison(args)
        return
    num_envs, threads, horizon = args.n * args.k, args.threads, args.horizon
    print(
        f"N={args.n} K={args.k} H={horizon}: {num_envs} envs, {threads} threads, "
        f"torch threads {torch.get_num_threads()} (1 while sampling), mujoco {mujoco.__version__}"
    )
    for name in args.envs:
        family = mujoco_family(name, horizon)
        print(f"{name} ({type(family).__name__}, frame_skip {family.make_kwargs['frame_skip']})")
        sample, sampler = sampler_run(family, args.n, args.k)
        qpos, qvel, actions, controls = record(family, sample, num_envs, seed=0)
        physics = Physics(family, qpos, qvel, controls)
        runs: dict[str, Callable[[], int]] = {
            f"limit: mj_step in {threads} threads": physics.threads(threads),
            f"limit: mujoco.rollout, {threads} threads": physics.rollout(threads),
        }
        if mujoco_batch is not None:
            runs[f"limit: mujoco.batch, {threads} threads"] = physics.batch(threads)
        post_label = f"mj_step + mj_rnePostConstraint, {threads} threads"
        if family.contact_forces:
            runs[post_label] = physics.threads(threads, post_constraint=True)
        for stepper in ("batch", "threads"):
            env_run = native_env(family, num_envs, actions, stepper, threads)
            runs[f"native env, stepper {stepper}, policy actions"] = env_run
        seeds = iter(range(1, 10**6))
        stepper = resolve_stepper("auto", family.contact_forces)
        sampler_label = f"Sampler.sample (auto: {stepper}), policy 64x64"
        runs[sampler_label] = functools.partial(sampled_steps, sample, seeds)
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
        if family.contact_forces:
            post_wall, post_cpu = best[post_label]
            print(
                f"  sampler / (mj_step + mj_rnePostConstraint) = {sampled_wall / post_wall:.2f} "
                f"wall, {sampled_cpu / post_cpu:.2f} per CPU-s",
                flush=True,
            )


def sampled_steps(sample: Callable[[int], Batch], seeds: Iterator[int]) -> int:
    """Environment steps of one `sample` call with the next seed."""
    return sample(next(seeds)).num_steps


def mujoco_family(name: str, horizon: int) -> MujocoFamily:
    """The MuJoCo task family `name` at horizon H; SystemExit for any other family."""
    family = make_family(name, {"max_episode_steps": horizon})
    if not isinstance(family, MujocoFamily):
        raise SystemExit(f"{name} is not a MuJoCo family: this benchmark steps MuJoCo models")
    return family


def phase_run(sampler: TrajectorySampler, params: Params, tasks: list) -> Callable[[], int]:
    """One post-update phase (per-task parameters) per call, a new seed each time."""
    seeds = iter(range(10**6))

    def run() -> int:
        return sampler.sample(params, tasks, seed=next(seeds), per_task=True).num_steps

    return run


def warp_env_run(
    family: MujocoFamily, num_envs: int, horizon: int, device: str
) -> Callable[[], int]:
    """The warp batch env alone, stepping zero actions for an episode."""
    env = family.make_batch_env(num_envs, stepper="warp", device=device)
    tasks = family.sample_tasks(num_envs, np.random.default_rng(0))
    actions = torch.zeros(num_envs, family.action_space.shape[0], device=device)

    def run() -> int:
        env.reset(tasks, seed=0)
        for _ in range(horizon):
            env.step(actions)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return horizon * num_envs

    return run


def warp_comparison(args: argparse.Namespace) -> None:
    """The warp backend against the native C backend (see the module doc)."""
    device = args.device
    print(
        f"N={args.n} K={args.k} H={args.horizon}: {args.n * args.k} worlds on {device} "
        f"({torch.cuda.get_device_name(0) if device.startswith('cuda') else 'CPU'}), "
        f"C backends on {args.threads} CPU threads"
    )
    for name in args.envs:
        family = mujoco_family(name, args.horizon)
        print(f"{name} ({type(family).__name__})")
        obs_dim, act_dim = family.observation_space.shape[0], family.action_space.shape[0]
        tasks = family.sample_tasks(args.n, np.random.default_rng(0))
        runs: dict[str, Callable[[], int]] = {}
        samplers = []
        for backend, where in (("warp", device), ("native", device), ("native", "cpu")):
            label = f"Sampler.sample, {backend}, policy on {where}"
            if label in runs:
                continue
            policy = GaussianMLPPolicy(obs_dim, act_dim, (64, 64), "tanh").to(where)
            theta = parameters_of(policy)
            phi = {n: p.expand(args.n, *p.shape).clone() for n, p in theta.items()}
            sampler = Sampler(family, policy, args.k, device=where, backend=backend)
            samplers.append(sampler)
            runs[label] = phase_run(sampler, phi, tasks)
        runs[f"warp env alone, zero actions, {device}"] = warp_env_run(
            family, args.n * args.k, args.horizon, device
        )
        for run in runs.values():  # warm-up: kernels compiled, graphs captured, envs built
            run()
        rates: dict[str, list[tuple[float, float]]] = {label: [] for label in runs}
        for _ in range(args.repeats):
            for label, run in runs.items():
                rates[label].append(timed(run))
        print(f"  {'env steps/s':<46s} {'wall, best (spread)':>26s}")
        best = {label: report(label, values, cpu=False) for label, values in rates.items()}
        warp_label, native_label = list(runs)[:2]
        print(
            f"  warp / native (policy on {device}) = "
            f"{best[warp_label][0] / best[native_label][0]:.2f} wall",
            flush=True,
        )
        for sampler in samplers:
            sampler.close()


def ray_comparison(args: argparse.Namespace) -> None:
    """Local sampler vs RaySampler with 1 and 2 actors, side by side (see the module doc)."""
    import ray

    from maml_rl.ray_sampler import RaySampler, _actor_environment

    threads = args.threads
    ray.init(  # logical CPUs for both configurations' actors at once (round-robin timing)
        num_cpus=2 * threads,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": _actor_environment()},
    )
    print(f"N={args.n} K={args.k} H={args.horizon}: local Ray instance on {threads} CPUs")
    for name in args.envs:
        family = mujoco_family(name, args.horizon)
        print(f"{name} ({type(family).__name__})")
        obs_dim, act_dim = family.observation_space.shape[0], family.action_space.shape[0]
        policy = GaussianMLPPolicy(obs_dim, act_dim, (64, 64), "tanh")
        theta = parameters_of(policy)
        phi = {n: p.expand(args.n, *p.shape).clone() for n, p in theta.items()}
        tasks = family.sample_tasks(args.n, np.random.default_rng(0))
        half = max(1, threads // 2)
        remote = RaySampler(family, policy, args.k, num_actors=2, actor_cpus=half)
        samplers: dict[str, TrajectorySampler] = {
            "local Sampler (auto backend)": Sampler(family, policy, args.k),
            f"ray, 1 actor x {threads} CPUs": RaySampler(
                family, policy, args.k, num_actors=1, actor_cpus=threads
            ),
            f"ray, 2 actors x {half} CPUs": remote,
        }
        runs = {label: phase_run(s, phi, tasks) for label, s in samplers.items()}
        for run in runs.values():  # warm-up: actors start, environments are built
            run()
        rates: dict[str, list[tuple[float, float]]] = {label: [] for label in runs}
        walls: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.repeats):
            for label, run in runs.items():
                start = time.perf_counter()
                rates[label].append(timed(run))
                walls[label].append(time.perf_counter() - start)
        print(f"  {'env steps/s':<46s} {'wall, best (spread)':>26s}")
        best = {label: report(label, values, cpu=False) for label, values in rates.items()}
        local_label = next(iter(runs))
        for label in list(runs)[1:]:
            extra = min(walls[label]) - min(walls[local_label])
            print(
                f"  {label} / local = {best[label][0] / best[local_label][0]:.2f} wall; "
                f"phase {min(walls[label]):.2f} s vs {min(walls[local_label]):.2f} s "
                f"(Ray adds {extra:+.2f} s)"
            )
        remote.sample(phi, tasks, seed=0, per_task=True)
        per_task_traffic = (remote.traffic.sent, remote.traffic.received)
        remote.sample(theta, tasks, seed=0, per_task=False)
        print(
            f"  bytes per phase: per-task phi {per_task_traffic[0] / 1e6:.2f} MB out, "
            f"shared theta {remote.traffic.sent / 1e6:.3f} MB out (once, read by every actor), "
            f"batch {per_task_traffic[1] / 1e6:.2f} MB back",
            flush=True,
        )
        for sampler in samplers.values():
            sampler.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
