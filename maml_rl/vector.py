"""Batch-environment backends and `make_batch_env`, the factory that picks one.

Backends (``make_batch_env(family, num_envs, backend)``):

* ``native``: the family's own ``make_batch_env(num_envs)`` — array code (2D navigation) or
  MuJoCo simulations stepped all at once (``envs.mujoco_batch``);
* ``threads``: the native env with its ``stepper="threads"`` (MuJoCo families: one MjData per
  environment, stepped by a pool of Python threads);
* ``warp``: the native env with its ``stepper="warp"`` on the policy's device (MuJoCo families:
  all environments as one MuJoCo Warp batch, `envs.warp_batch`; needs the optional extra,
  ``pip install "maml-rl[warp]"``). Such an env has a ``device`` and takes and returns torch
  tensors on it;
* ``sync``: `GymBatchEnv`, the family's Gymnasium environments stepped one after another here;
* ``async``: `AsyncGymBatchEnv`, the same in worker processes (``gymnasium.vector``), one
  process per environment;
* ``procs``: `maml_rl.process_env.ProcessBatchEnv`, the environments sharded over one worker
  process per CPU, each stepping its shard with a `GymBatchEnv`. It pays for environments whose
  step costs much more than a pipe round trip (Python-heavy simulators such as Meta-World,
  ~1 ms a step), on several cores; for fast ones (2D navigation, a MuJoCo step) it is slower;
* ``auto``: ``warp`` when the run is on a CUDA device, the family offers it
  (``warp_stepper = True``) and MuJoCo Warp is installed; else ``native`` when the family has
  one, else the family's ``sampler_backend`` attribute when it sets one (one of
  `GYM_BACKENDS`, e.g. ``"procs"``), else ``sync`` (on a few cores a process round trip costs
  more than a MuJoCo step, so the process backends only pay for slow Python environments).

All give the same trajectories for the same seed: sub-environment i is reset with
``seed + i`` and its own task. Gymnasium's vector envs send the same reset options to every
sub-env, so each task travels separately (`set_attr`) and reaches its env at the next reset.
An environment whose episode has ended is not stepped again (sync) or steps into a new
episode that is ignored (async, Gymnasium's next-step autoreset); either way it reports its
last observation, reward 0 and its terminated flag until the next reset.

Success: after every step the Gymnasium backends hold ``success`` [num_envs] (bool), whether
that step's ``info["success"]`` was true (False for an env whose episode had ended). The sampler
reads it for families that set ``reports_success = True`` (a native batch env of such a family
keeps the same attribute).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from maml_rl.runtime import configure_worker_signals
from maml_rl.tasks import BatchEnv, Task, TaskFamily, TaskFamilyError

BACKENDS = ("auto", "native", "threads", "warp", "sync", "async", "procs")
GYM_BACKENDS = ("sync", "async", "procs")
"""The backends that step a family's Gymnasium environments (``make_env``), the values a
family's optional ``sampler_backend`` attribute may take."""


class GymBatchEnv:
    """`num_envs` Gymnasium environments stepped one after another in this process."""

    def __init__(
        self, make_env: Callable[[], gym.Env], num_envs: int, max_episode_steps: int
    ) -> None:
        self.envs = [make_env() for _ in range(num_envs)]
        self.num_envs = num_envs
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.max_episode_steps = max_episode_steps
        self._done = np.zeros(num_envs, dtype=bool)
        self._obs: np.ndarray | None = None
        self._t = 0
        self.success = np.zeros(num_envs, dtype=bool)

    def reset(self, tasks: Sequence[Task], seed: int | None = None) -> np.ndarray:
        """Observations [num_envs, obs_dim] in the envs' own dtype; env i gets seed + i."""
        if len(tasks) != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} tasks, got {len(tasks)}")
        observations = []
        for i, (env, task) in enumerate(zip(self.envs, tasks, strict=True)):
            env_seed = None if seed is None else seed + i
            reset = functools.partial(env.reset, seed=env_seed, options={"task": task})
            obs = guarded_call(i, reset)[0]
            observations.append(checked_observation(obs, self.observation_space, i))
        self._obs = np.stack(observations)
        self._done[:] = False
        self.success[:] = False
        self._t = 0
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        assert self._obs is not None, "reset before step"
        rewards = np.zeros(self.num_envs)
        terminated = self._done.copy()
        truncated = np.zeros(self.num_envs, dtype=bool)
        self.success[:] = False
        for i, env in enumerate(self.envs):
            if self._done[i]:
                continue
            step = functools.partial(env.step, actions[i])
            obs, reward, term, trunc, info = guarded_call(i, step)
            obs = checked_observation(obs, self.observation_space, i)
            self._obs[i], rewards[i], terminated[i], truncated[i] = obs, reward, term, trunc
            self.success[i] = bool(info.get("success", False))
        self._t += 1
        truncated |= self._t >= self.max_episode_steps
        self._done |= terminated | truncated
        return self._obs.copy(), rewards, terminated, truncated

    def close(self) -> None:
        for env in self.envs:
            env.close()


class EnvironmentFailure(TaskFamilyError):
    """Environment `index` of a batch raised or returned an unusable observation; the sampler
    turns it into one line naming the task, trajectory and step."""

    def __init__(self, index: int, cause: str) -> None:
        super().__init__(f"environment {index}: {cause}")
        self.index, self.cause = index, cause


def checked_observation(obs: Any, space: gym.Space, index: int) -> np.ndarray:
    """`obs` as an array, or EnvironmentFailure if its shape is not the observation space's."""
    array = np.asarray(obs)
    if array.shape != space.shape:
        raise EnvironmentFailure(
            index, f"observation of shape {array.shape}, its observation space has {space.shape}"
        )
    return array


def guarded_call(index: int, call: Callable[[], Any]) -> Any:
    """`call()`, with any exception of environment `index` as an EnvironmentFailure."""
    try:
        return call()
    except TaskFamilyError:
        raise
    except Exception as error:
        raise EnvironmentFailure(index, f"{type(error).__name__}: {error}") from error


class TaskOnReset(gym.Wrapper):
    """Passes the task last assigned to `next_task` (by the vector env's ``set_attr``) to the
    next reset as ``options={"task": ...}``; a reset without one keeps the env's task."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.next_task: Task | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if self.next_task is not None:
            options = {**(options or {}), "task": self.next_task}
            self.next_task = None
        return self.env.reset(seed=seed, options=options)


def _make_worker_task_env(make_env: Callable[[], gym.Env]) -> gym.Env:
    """An async worker's environment, built in the worker (where its signals are set first:
    `configure_worker_signals`)."""
    configure_worker_signals()
    return TaskOnReset(make_env())


class WorkerDiedError(TaskFamilyError):
    """An environment worker process exited or crashed; the message is one line."""


class AsyncGymBatchEnv:
    """`num_envs` Gymnasium environments in worker processes (``gymnasium.vector.AsyncVectorEnv``).

    context: the multiprocessing start method (None: the platform's default). Workers are
    daemons, closed by `close` (also after a failed call, which leaves the env unusable).
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        num_envs: int,
        max_episode_steps: int,
        context: str | None = None,
    ) -> None:
        self.vector = gym.vector.AsyncVectorEnv.__new__(gym.vector.AsyncVectorEnv)
        try:
            gym.vector.AsyncVectorEnv.__init__(
                self.vector,
                [functools.partial(_make_worker_task_env, make_env)] * num_envs,
                context=context,
            )
        except BaseException:  # e.g. too few file descriptors (EMFILE) for the next pipe
            self._kill_workers()  # the workers started so far end quietly, not on a broken pipe
            raise
        self.num_envs = num_envs
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space
        self.max_episode_steps = max_episode_steps
        self._done = np.zeros(num_envs, dtype=bool)
        self._terminated = np.zeros(num_envs, dtype=bool)
        self._obs: np.ndarray | None = None
        self._t = 0
        self.success = np.zeros(num_envs, dtype=bool)

    def _guarded(self, call: Callable[[], Any]) -> Any:
        """`call()` on the workers; a worker's fault becomes one line (Gymnasium's own report of
        it, a warning per worker with the worker's traceback, is silenced: the line says it)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"gymnasium\.vector\.async_vector_env")
            return self._call_workers(call)

    def _call_workers(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (EOFError, BrokenPipeError, ConnectionError) as error:
            self._kill_workers()
            codes = [p.exitcode for p in self.vector.processes]
            raise WorkerDiedError(
                f"an environment worker process died (exit codes {codes}); all workers closed"
            ) from error
        except TaskFamilyError:
            self.close(terminate=True)
            raise
        except Exception as error:  # raised in a worker, re-raised here by Gymnasium
            self.close(terminate=True)
            raise TaskFamilyError(
                f"an environment worker raised {type(error).__name__}: {error}; workers closed"
            ) from error
        except BaseException:
            self.close(terminate=True)
            raise

    def reset(self, tasks: Sequence[Task], seed: int | None = None) -> np.ndarray:
        """Observations [num_envs, obs_dim]; env i gets its task and seed + i."""
        if len(tasks) != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} tasks, got {len(tasks)}")
        seeds: list[int | None] | None = (
            None if seed is None else [seed + i for i in range(self.num_envs)]
        )

        def reset() -> np.ndarray:
            self.vector.set_attr("next_task", list(tasks))
            return self.vector.reset(seed=seeds)[0]

        self._obs = np.array(self._guarded(reset))
        self._done[:] = False
        self._terminated[:] = False
        self.success[:] = False
        self._t = 0
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        assert self._obs is not None, "reset before step"
        obs, rewards, terminated, truncated, infos = self._guarded(
            lambda: self.vector.step(np.asarray(actions))
        )
        live = ~self._done
        reported = np.asarray(infos.get("_success", np.zeros(self.num_envs, dtype=bool)))
        values = np.asarray(infos.get("success", np.zeros(self.num_envs)))
        self.success = live & reported & values.astype(bool)
        self._obs[live] = obs[live]
        rewards = np.where(live, rewards, 0.0)
        terminated = np.where(live, terminated, self._terminated)
        self._t += 1
        truncated = (live & truncated) | (self._t >= self.max_episode_steps)
        self._terminated = terminated
        self._done |= terminated | truncated
        return self._obs.copy(), rewards, terminated, truncated

    def close(self, terminate: bool = False) -> None:
        if not self.vector.closed:
            self.vector.close(terminate=terminate)

    def _kill_workers(self) -> None:
        """After a worker died: Gymnasium's close would wait on the dead pipe, so terminate
        every worker directly and mark the vector env closed."""
        for process in getattr(self.vector, "processes", []):  # all, or those started so far
            if process.pid is None:  # its start failed
                continue
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
        for pipe in getattr(self.vector, "parent_pipes", []):
            pipe.close()
        self.vector.closed = True


def horizon_of(family: TaskFamily) -> int:
    horizon = getattr(family, "max_episode_steps", None)
    if horizon is None:
        raise TaskFamilyError(f"task family {family!r} must define max_episode_steps")
    return int(horizon)


WARP_MISSING = 'sampler "warp" needs MuJoCo Warp, not installed: pip install "maml-rl[warp]"'


def warp_installed() -> bool:
    """Whether MuJoCo Warp (the optional extra ``maml-rl[warp]``) can be imported."""
    return importlib.util.find_spec("mujoco_warp") is not None


def native_batch_env(
    family: TaskFamily,
    num_envs: int,
    stepper: str | None = None,
    num_threads: int | None = None,
    device: torch.device | None = None,
) -> BatchEnv:
    """The family's own ``make_batch_env(num_envs)``, with ``stepper=...`` when given,
    ``num_threads=...`` when given and the family takes it, and ``device=...`` for the
    "warp" stepper."""
    native = getattr(family, "make_batch_env", None)
    if not callable(native):
        raise TaskFamilyError(
            f"task family {family!r} has no native make_batch_env; use backend 'sync', "
            "'async' or 'procs'"
        )
    parameters = inspect.signature(native).parameters
    kwargs: dict[str, Any] = {}
    if stepper is not None:
        if "stepper" not in parameters:
            raise TaskFamilyError(
                f"task family {family!r}: make_batch_env takes no stepper, so backend "
                f"'{stepper}' is not available (it is for the MuJoCo families)"
            )
        kwargs["stepper"] = stepper
    if num_threads is not None and "num_threads" in parameters:
        kwargs["num_threads"] = num_threads
    if stepper == "warp":
        if not getattr(family, "warp_stepper", False) or "device" not in parameters:
            raise TaskFamilyError(
                f"task family {family!r} offers no MuJoCo Warp batch env; backend 'warp' is "
                "for the MuJoCo families"
            )
        if not warp_installed():
            raise TaskFamilyError(WARP_MISSING)
        kwargs["device"] = device
    return native(num_envs, **kwargs)


def resolved_backend(
    family: TaskFamily, backend: str, device: torch.device | str | None = None
) -> str:
    """The backend `make_batch_env` uses for `backend`. "auto": warp if `device` is a CUDA
    device, the family offers a Warp batch env (``warp_stepper``) and MuJoCo Warp is installed;
    else native if the family has a native batch environment, else its ``sampler_backend``
    attribute if it has one (one of `GYM_BACKENDS`, else TaskFamilyError), else sync."""
    if backend != "auto":
        return backend
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda and getattr(family, "warp_stepper", False) and warp_installed():
        return "warp"
    if callable(getattr(family, "make_batch_env", None)):
        return "native"
    preferred = getattr(family, "sampler_backend", None)
    if preferred is None:
        return "sync"
    if preferred not in GYM_BACKENDS:
        raise TaskFamilyError(
            f"task family {family!r}: sampler_backend must be one of {GYM_BACKENDS}, "
            f"got {preferred!r}"
        )
    return str(preferred)


def make_batch_env(
    family: TaskFamily,
    num_envs: int,
    backend: str = "auto",
    num_threads: int | None = None,
    device: torch.device | str | None = None,
) -> BatchEnv:
    """A `BatchEnv` of `num_envs` environments of `family` on `backend` (see the module doc).

    num_threads: threads of a native MuJoCo batch, or worker processes of `procs` (a Ray
    actor passes its CPUs; default: all CPUs of this process). device: the policy's device,
    where the warp backend steps (and which "auto" looks at)."""
    if backend not in BACKENDS:
        raise TaskFamilyError(f"unknown sampler backend {backend!r}; choose one of {BACKENDS}")
    backend = resolved_backend(family, backend, device)
    if backend == "warp":
        where = torch.device("cpu" if device is None else device)
        return native_batch_env(family, num_envs, "warp", num_threads, where)
    if backend == "native":
        return native_batch_env(family, num_envs, num_threads=num_threads)
    if backend == "threads":
        return native_batch_env(family, num_envs, stepper="threads", num_threads=num_threads)
    if backend == "async":
        return AsyncGymBatchEnv(family.make_env, num_envs, horizon_of(family))
    if backend == "procs":
        from maml_rl.process_env import ProcessBatchEnv  # it imports this module

        return ProcessBatchEnv(family.make_env, num_envs, horizon_of(family), num_threads)
    return GymBatchEnv(family.make_env, num_envs, horizon_of(family))
