"""Native batched MuJoCo environments: one MjModel, B simulations stepped at once.

`MujocoBatchEnv` runs B environments of a `MujocoFamily` with trajectories identical to B of
its Gymnasium environments (``family.make_env()``, env i reset with ``seed + i``):

* reset replays Gymnasium's ``MujocoEnv.reset`` per environment: ``np_random`` seeded from
  ``seed + i`` (or kept when the seed is None), ``mj_resetData``, then
  ``qpos = init_qpos + U(-s, s)^nq`` and ``qvel = init_qvel + s·N(0, 1)^nv`` drawn in that
  order from that generator (s = ``reset_noise_scale``), then ``mj_forward``;
* a step sends ``clip(float32(action) / action_scale, low, high)`` to the actuators
  (`MujocoTaskEnv`'s mapping), advances ``frame_skip`` substeps and, where the family reads
  contact forces (Ant), calls ``mj_rnePostConstraint`` as Gymnasium does;
* observations, ``info`` terms and terminations are the family's array code
  (``batch_observation``, ``batch_step_info``) and the reward is the family's own
  ``reward(stack_tasks(tasks), info)``; episodes are truncated after ``max_episode_steps``.

Three steppers move the physics:

* ``"batch"``: ``mujoco.batch.Batch`` (MuJoCo >= 4.0), whose C++ thread pool steps all
  simulations in one call and whose state rows are live numpy arrays. ``mj_step`` leaves
  ``cfrc_ext`` stale and the batch cannot run ``mj_rnePostConstraint`` itself. Gymnasium runs
  it on the MjData as ``mj_step`` left it (with Ant's RK4 integrator: the contacts of the last
  Runge-Kutta stage), which no forward pass from the saved state reproduces (a sensor that
  needs it, or ``forward()``, gives other forces); so for families that need contact forces
  the batch keeps one MjData per simulation and copies each out to run it: exact, but a
  serial loop (Ant: use ``"threads"``).
* ``"threads"``: B simulations stepped in chunks by a pool of Python threads (``mj_step``
  releases the GIL), each thread on its own ``MjData`` into which a simulation's integration
  state is swapped for its step, each step followed by ``mj_rnePostConstraint`` where needed.

* ``"warp"``: all B simulations as one MuJoCo Warp batch on a torch device
  (`envs.warp_batch`); the arrays the family reads, and the env's observations, rewards and
  flags, are then torch tensors on that device (float32), and the same family code computes
  them (the family's array code takes numpy arrays or torch tensors: `array_namespace`).

``"auto"`` picks ``"batch"`` unless the family needs contact forces or MuJoCo has no
``mujoco.batch``, else ``"threads"`` (benchmarks/sampler.py measures both).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Protocol

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.utils import seeding

from maml_rl.tasks import Task

try:
    import mujoco.batch as mujoco_batch
except ImportError:  # mujoco < 4.0: only the "threads" stepper
    mujoco_batch = None

if TYPE_CHECKING:
    from .mujoco_base import MujocoFamily

STEPPERS = ("auto", "batch", "threads", "warp")
CHUNKS_PER_THREAD = 4


def box_space(space: gym.spaces.Space, what: str) -> gym.spaces.Box:
    """`space`, a Box; TypeError otherwise, naming `what` ("actions", "observations")."""
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"a MuJoCo environment's {what} are a Box, got {space}")
    return space


def mujoco_env(env: gym.Env) -> MujocoEnv:
    """The Gymnasium MuJoCo environment inside `env`'s wrappers; TypeError if it is none."""
    inner = env.unwrapped
    if not isinstance(inner, MujocoEnv):
        raise TypeError(f"{type(inner).__name__} is not a Gymnasium MuJoCo environment")
    return inner


class Simulations(Protocol):
    """B simulations of one model, read as arrays after `reset` and `step`.

    qpos [B, nq], qvel [B, nv], xpos [B, nbody, 3] (as MjData after ``mj_step``: from the
    last substep's forward pass), cfrc_ext [B, nbody, 6] (zeros unless contact forces are on):
    numpy arrays (float64), or torch tensors on `device` (float32) for the Warp stepper.
    """

    @property
    def device(self) -> torch.device | None:
        """None: the arrays are numpy's; else the torch device of the tensors."""

    qpos: Any
    qvel: Any
    xpos: Any
    cfrc_ext: Any

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """``mj_resetData``, set qpos [B, nq], qvel [B, nv], ``mj_forward``, for every sim."""

    def step(self, ctrl: Any, live: Any) -> None:
        """Set ctrl [B, nu] and advance the simulations where `live` [B] (bool) is true by
        frame_skip substeps; the others keep their state."""

    def close(self) -> None: ...


def array_namespace(array: Any) -> Any:
    """torch for a torch tensor, else numpy: the module whose functions the families' array
    code calls (abs, clip, concatenate, isfinite, square, sum and all with ``axis=``, where,
    zeros_like, ...: the same names and meaning in both), so that the C steppers (numpy) and
    the Warp stepper (torch) run one description of the observation, reward and health terms."""
    return torch if isinstance(array, torch.Tensor) else np


def copied(array: Any) -> Any:
    """A copy of a numpy array or a torch tensor (the steppers' arrays are live views)."""
    return array.clone() if isinstance(array, torch.Tensor) else array.copy()


def as_array(values: Any, dtype: type, device: torch.device | None) -> Any:
    """`values` as a numpy array of `dtype` (np.float32, np.bool_, np.float64), or, with a
    device, as a torch tensor of that dtype on it (no copy when it already is one)."""
    if device is None:
        return np.asarray(values, dtype=dtype)
    return torch.as_tensor(values, dtype=TORCH_DTYPES[dtype], device=device)


TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64, np.bool_: torch.bool}


def control_reward(action: Any, weight: float) -> Any:
    """Gymnasium's ``reward_ctrl = -weight·‖a‖²`` for robot actions [B, nu] (float32, as the
    single env computes it) -> [B]."""
    xp = array_namespace(action)
    return -(weight * xp.sum(xp.square(action), axis=-1))


def stack_tasks(tasks: Sequence[Task], device: torch.device | None = None) -> Task:
    """B tasks of one dataclass as one instance of it whose fields are arrays [B, ...].

    ``stack_tasks([VelocityTask(1.0), VelocityTask(2.0)]).velocity == array([1.0, 2.0])``;
    a `GoalTask`'s goal becomes [B, 2]. Reward functions take either form. With a device, the
    fields are torch tensors on it (floats as float32, the Warp stepper's precision).
    """
    kind = type(tasks[0])
    if any(type(task) is not kind for task in tasks):
        names = sorted({type(task).__name__ for task in tasks})
        raise TypeError(f"cannot stack tasks of different types: {names}")
    stacked: dict[str, Any] = {
        f.name: np.array([getattr(t, f.name) for t in tasks]) for f in fields(kind)
    }
    if device is not None:
        stacked = {
            name: torch.as_tensor(
                array.astype(np.float32) if array.dtype.kind == "f" else array, device=device
            )
            for name, array in stacked.items()
        }
    return kind(**stacked)


def default_num_threads() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class BatchStepper:
    """All simulations in one ``mujoco.batch.Batch``, stepped by its own thread pool."""

    def __init__(
        self,
        model: mujoco.MjModel,
        num_envs: int,
        frame_skip: int,
        num_threads: int,
        contact_forces: bool,
    ) -> None:
        self.model, self.frame_skip, self.contact_forces = model, frame_skip, contact_forces
        self.device = None
        assert mujoco_batch is not None, "mujoco.batch needs mujoco >= 4.0"
        self._batch = mujoco_batch.Batch(
            model, num_envs, nthread=num_threads, persistent=contact_forces
        )
        self.qpos, self.qvel = self._batch.bind("qpos"), self._batch.bind("qvel")
        self._ctrl = self._batch.bind("ctrl")
        self.xpos = self._batch.bind("xpos")
        self.cfrc_ext = np.zeros((num_envs, model.nbody, 6))
        self._scratch = mujoco.MjData(model) if contact_forces else None

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self._batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE.value)
        self.qpos[:], self.qvel[:] = qpos, qvel
        self._batch.forward()
        if self.contact_forces:
            self._copy_contact_forces(range(len(self.qpos)), post_constraint=False)

    def step(self, ctrl: np.ndarray, live: np.ndarray) -> None:
        ids = live_ids(live)
        if ids is not None and len(ids) == 0:
            return
        self._ctrl[:] = ctrl
        self._batch.step(ids, nstep=self.frame_skip)
        if self.contact_forces:
            rows = range(len(self.qpos)) if ids is None else ids
            self._copy_contact_forces(rows, post_constraint=True)

    def _copy_contact_forces(self, rows: Iterable[int], post_constraint: bool) -> None:
        """cfrc_ext of each simulation's persistent MjData, after ``mj_rnePostConstraint``."""
        data = self._scratch
        assert data is not None
        for i in rows:
            self._batch.get_data(int(i), data)
            if post_constraint:
                mujoco.mj_rnePostConstraint(self.model, data)
            self.cfrc_ext[i] = data.cfrc_ext

    def close(self) -> None:
        pass


class ThreadStepper:
    """B simulations stepped in chunks by a pool of `num_threads` threads (``mj_step`` releases
    the GIL), each thread on its own ``MjData``.

    A simulation between steps is its row of ``mjSTATE_INTEGRATION`` state (qpos, qvel, act,
    warm start, time, ctrl, ...: everything ``mj_step`` reads), swapped into the thread's MjData
    for its step: a step from that state is bit-identical to one on a MjData kept per
    simulation (tested against Gymnasium's environments), and the thread's MjData stays in its
    cache instead of B of them streaming through it, as ``mujoco.rollout`` does: 800 Ant
    simulations on 2 threads step 7.5 % faster (median of 6 interleaved rounds, 10,539 against
    9,801 env steps/s with one MjData per simulation). Contact forces are read right after the step
    from the MjData as ``mj_step`` left it, as Gymnasium reads them.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        num_envs: int,
        frame_skip: int,
        num_threads: int,
        contact_forces: bool,
    ) -> None:
        self.model, self.frame_skip, self.contact_forces = model, frame_skip, contact_forces
        self.device = None
        self._spec = mujoco.mjtState.mjSTATE_INTEGRATION
        self._state = np.zeros((num_envs, mujoco.mj_stateSize(model, self._spec)))
        self.qpos = np.zeros((num_envs, model.nq))
        self.qvel = np.zeros((num_envs, model.nv))
        self.xpos = np.zeros((num_envs, model.nbody, 3))
        self.cfrc_ext = np.zeros((num_envs, model.nbody, 6))
        self._num_envs = num_envs
        self._num_threads = max(1, min(num_threads, num_envs))
        self._pool = ThreadPoolExecutor(self._num_threads) if self._num_threads > 1 else None
        self._local = threading.local()

    def _data(self) -> mujoco.MjData:
        """The calling thread's MjData (made on its first use)."""
        data = getattr(self._local, "data", None)
        if data is None:
            data = self._local.data = mujoco.MjData(self.model)
        return data

    def _store(self, i: int, data: mujoco.MjData) -> None:
        mujoco.mj_getState(self.model, data, self._state[i], self._spec)
        self.qpos[i], self.qvel[i], self.xpos[i] = data.qpos, data.qvel, data.xpos
        if self.contact_forces:
            self.cfrc_ext[i] = data.cfrc_ext

    def _run(self, work: Callable[[np.ndarray], None], ids: np.ndarray | None) -> None:
        rows = np.arange(self._num_envs) if ids is None else np.asarray(ids)
        if len(rows) == 0:
            return
        if self._pool is None:
            work(rows)
            return
        # several chunks per thread, taken as threads come free: simulations cost unequal
        # time (contacts), and one fixed share per thread would leave a thread idle at the end
        num_chunks = min(len(rows), CHUNKS_PER_THREAD * self._num_threads)
        chunks = [chunk for chunk in np.array_split(rows, num_chunks) if len(chunk)]
        for _ in self._pool.map(work, chunks):  # re-raises a worker's exception
            pass

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        def work(rows: np.ndarray) -> None:
            data = self._data()
            for i in rows:
                mujoco.mj_resetData(self.model, data)
                data.qpos[:], data.qvel[:] = qpos[i], qvel[i]
                mujoco.mj_forward(self.model, data)
                self._store(i, data)

        self._run(work, None)

    def step(self, ctrl: np.ndarray, live: np.ndarray) -> None:
        model, frame_skip, contact_forces = self.model, self.frame_skip, self.contact_forces
        state, spec = self._state, self._spec

        def work(rows: np.ndarray) -> None:
            data = self._data()
            data_ctrl = data.ctrl
            for i in rows:
                mujoco.mj_setState(model, data, state[i], spec)
                data_ctrl[:] = ctrl[i]
                mujoco.mj_step(model, data, nstep=frame_skip)
                if contact_forces:
                    mujoco.mj_rnePostConstraint(model, data)
                self._store(i, data)

        self._run(work, live_ids(live))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def live_ids(live: np.ndarray) -> np.ndarray | None:
    """The indices where `live` [B] is true, or None when all are."""
    return None if live.all() else np.flatnonzero(live)


def resolve_stepper(stepper: str, contact_forces: bool) -> str:
    """The stepper "auto" stands for: "batch" unless contact forces are needed or MuJoCo has
    no ``mujoco.batch``, else "threads" ("auto" never picks "warp")."""
    if stepper not in STEPPERS:
        raise ValueError(f"unknown MuJoCo stepper {stepper!r}; choose one of {STEPPERS}")
    if stepper == "batch" and mujoco_batch is None:
        raise ValueError(f"stepper 'batch' needs mujoco >= 4.0, have {mujoco.__version__}")
    if stepper == "auto":
        return "batch" if mujoco_batch is not None and not contact_forces else "threads"
    return stepper


class MujocoBatchEnv:
    """`num_envs` environments of a MuJoCo family in lock-step, each with its own task.

    Implements `maml_rl.tasks.BatchEnv`: ``reset(tasks, seed)`` -> observations [B, obs_dim]
    (float64, as Gymnasium's); ``step(actions [B, act_dim])`` -> (observations, rewards [B],
    terminated [B], truncated [B]). An environment whose episode has ended is not stepped
    again until the next reset; it reports reward 0 and keeps its terminated flag.

    With the "warp" stepper, `device` is the torch device (default cpu) of its simulations:
    step takes actions as a tensor (or array) and every result is a torch tensor on it
    (observations and rewards float32); the C steppers have ``device = None``.
    """

    def __init__(
        self,
        family: MujocoFamily,
        num_envs: int,
        stepper: str = "auto",
        num_threads: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.family, self.num_envs = family, num_envs
        self.stepper = resolve_stepper(stepper, family.contact_forces)
        self.observation_space: gym.spaces.Space = family.observation_space
        self.action_space: gym.spaces.Box = family.action_space
        self.max_episode_steps = family.max_episode_steps
        env = mujoco_env(family.make_gym_env())
        self._init_qpos, self._init_qvel = env.init_qpos.copy(), env.init_qvel.copy()
        self._noise_scale = float(family.make_kwargs["reset_noise_scale"])
        box = box_space(env.action_space, "actions")
        self._low = box.low.astype(np.float32)
        self._high = box.high.astype(np.float32)
        model, frame_skip = env.model, int(env.frame_skip)
        env.close()
        self.sim: Simulations
        if self.stepper == "warp":
            from .warp_batch import WarpStepper  # optional dependency: mujoco-warp

            where = torch.device("cpu" if device is None else device)
            self.sim = WarpStepper(model, num_envs, frame_skip, family.contact_forces, where)
        else:
            threads = default_num_threads() if num_threads is None else int(num_threads)
            make = BatchStepper if self.stepper == "batch" else ThreadStepper
            self.sim = make(model, num_envs, frame_skip, threads, family.contact_forces)
        self.device = self.sim.device
        self._low = as_array(self._low, np.float32, self.device)
        self._high = as_array(self._high, np.float32, self.device)
        self._generators: list[np.random.Generator] | None = None
        self._tasks: Task | None = None
        self._done = as_array(np.zeros(num_envs), np.bool_, self.device)
        self._terminated = as_array(np.zeros(num_envs), np.bool_, self.device)
        self._t = 0

    def _reset_generators(self, seed: int | None) -> list[np.random.Generator]:
        """Gymnasium's ``reset(seed)``: env i's ``np_random`` from seed + i; with no seed,
        each env keeps drawing from its own generator (created unseeded on first use)."""
        if seed is not None:
            return [seeding.np_random(seed + i)[0] for i in range(self.num_envs)]
        if self._generators is None:
            return [seeding.np_random(None)[0] for _ in range(self.num_envs)]
        return self._generators

    def reset(self, tasks: Sequence[Task], seed: int | None = None) -> Any:
        if len(tasks) != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} tasks, got {len(tasks)}")
        self._generators = self._reset_generators(seed)
        nq, nv, scale = len(self._init_qpos), len(self._init_qvel), self._noise_scale
        qpos = np.empty((self.num_envs, nq))
        qvel = np.empty((self.num_envs, nv))
        for i, rng in enumerate(self._generators):  # Gymnasium's reset_model, draw for draw
            qpos[i] = self._init_qpos + rng.uniform(low=-scale, high=scale, size=nq)
            qvel[i] = self._init_qvel + scale * rng.standard_normal(nv)
        self.sim.reset(qpos, qvel)
        self._tasks = stack_tasks(tasks, self.device)
        self._done[:] = False
        self._terminated[:] = False
        self._t = 0
        return self.family.batch_observation(self.sim)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any]:
        assert self._tasks is not None, "reset before step"
        xp = array_namespace(self._done)
        scaled = as_array(actions, np.float32, self.device) / self.family.action_scale
        action = xp.clip(scaled, self._low, self._high)
        live = ~self._done
        before = self.family.batch_position(self.sim)
        self.sim.step(action, live)
        observations = self.family.batch_observation(self.sim)
        info, terminated = self.family.batch_step_info(self.sim, before, action)
        rewards = xp.where(live, self.family.reward(self._tasks, info), 0.0)
        terminated = xp.where(live, terminated, self._terminated)
        self._t += 1
        truncated = xp.full_like(self._done, self._t >= self.max_episode_steps)
        self._terminated = terminated
        self._done |= terminated | truncated
        return observations, rewards, terminated, truncated

    def close(self) -> None:
        self.sim.close()
