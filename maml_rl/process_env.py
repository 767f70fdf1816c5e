"""`ProcessBatchEnv` (backend ``procs``): Gymnasium environments sharded over worker processes.

``async`` (Gymnasium's ``AsyncVectorEnv``) starts one process per environment, which for a
meta-batch of 20 tasks x 10 trajectories means 200 processes. Here W worker processes (by
default one per CPU this process may use) each own a contiguous shard of the environments and
step it in-process with a `maml_rl.vector.GymBatchEnv`; every call is one pipe round trip per
worker, all workers stepping at once. It pays when an environment step costs much more than a
round trip (Python-heavy simulators such as Meta-World, ~1 ms a step) and several cores are free.

Results are bit-identical to ``sync``: the shard whose first global index is f is reset with
seed + f, so environment i still gets seed + i and tasks[i].

Workers start with ``forkserver`` (else ``spawn``), never ``fork``: the parent has torch loaded.
`make_env` travels pickled, with cloudpickle when plain pickle refuses it (a lambda, a class
defined in a function); what it refers to by reference must be importable in the workers.

Failures: an environment's exception comes back as `EnvironmentFailure` with its global index;
a failure to build the environments as a one-line `TaskFamilyError`; a worker that dies (killed,
segfault) as `WorkerDiedError`. After any failure every worker is terminated and the batch
environment is closed.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import gymnasium as gym
import numpy as np

from maml_rl.runtime import configure_worker_signals
from maml_rl.tasks import Task, TaskFamilyError
from maml_rl.vector import EnvironmentFailure, GymBatchEnv, WorkerDiedError

CLOSE_TIMEOUT_S = 5.0
"""How long `close` waits for workers to close their environments before terminating them."""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_context() -> str:
    """``forkserver`` where the platform has it, else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def shard_bounds(num_envs: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) global index ranges, one per worker, sizes differing by <= 1
    (the first ``num_envs % num_workers`` shards hold one more)."""
    base, extra = divmod(num_envs, num_workers)
    bounds, start = [], 0
    for w in range(num_workers):
        stop = start + base + (w < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(error: BaseException) -> str:
    return _one_line(f"{type(error).__name__}: {error}")


def _payload(make_env: Callable[[], gym.Env]) -> bytes:
    """`make_env` pickled (by reference), or by cloudpickle (by value) when pickle refuses."""
    try:
        return pickle.dumps(make_env)
    except Exception as error:
        try:
            import cloudpickle  # a dependency of Gymnasium

            return cloudpickle.dumps(make_env)
        except Exception as cloud_error:
            raise TaskFamilyError(
                f"make_env {make_env!r} cannot be sent to environment worker processes: "
                f"{_describe(error)}; cloudpickle: {_describe(cloud_error)}"
            ) from cloud_error


def _worker(
    pipe: Connection, payload: bytes, num_envs: int, max_episode_steps: int, first_index: int
) -> None:
    """A worker's loop: builds its shard's `GymBatchEnv` and answers the parent's commands.

    Every command gets one reply ``(kind, value)``: ``("ok", result)``, ``("env_failure",
    (global_index, cause))`` or ``("error", one_line_message)``. Ctrl-C is left to the parent,
    which terminates the workers; a closed parent pipe ends the loop.
    """
    configure_worker_signals()
    shard = f"environments {first_index}-{first_index + num_envs - 1}"
    try:
        try:
            make_env = pickle.loads(payload)
        except Exception as error:
            pipe.send(("error", f"an environment worker cannot load make_env: {_describe(error)}"))
            return
        try:
            env = GymBatchEnv(make_env, num_envs, max_episode_steps)
        except Exception as error:
            pipe.send(("error", f"make_env failed in the worker of {shard}: {_describe(error)}"))
            return
        pipe.send(("ok", (env.observation_space, env.action_space)))
        while True:
            command, data = pipe.recv()
            if command == "close":
                env.close()
                pipe.send(("ok", None))
                return
            try:
                if command == "reset":
                    tasks, seed = data
                    result: Any = env.reset(tasks, seed)
                elif command == "step":
                    result = (*env.step(data), env.success.copy())
                else:
                    raise ValueError(f"unknown command {command!r}")
            except EnvironmentFailure as failure:
                pipe.send(("env_failure", (first_index + failure.index, failure.cause)))
            except TaskFamilyError as error:
                pipe.send(("error", _one_line(str(error))))
            except Exception as error:
                pipe.send(("error", f"the worker of {shard} raised {_describe(error)}"))
            else:
                pipe.send(("ok", result))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent closed its end: nothing to answer


class ProcessBatchEnv:
    """`num_envs` Gymnasium environments sharded over W worker processes (see the module doc).

    Args:
        make_env: builds one environment (e.g. a task family's bound ``make_env``); picklable,
            or cloudpickle-able.
        num_envs: environments in the batch.
        max_episode_steps: episodes are truncated after this many steps.
        num_workers: W before capping at num_envs (default: the CPUs this process may use).
        context: the multiprocessing start method (default: forkserver, else spawn).

    Same interface as `GymBatchEnv`: ``reset(tasks, seed)`` -> observations [num_envs, obs_dim];
    ``step(actions [num_envs, *act_shape])`` -> (observations [num_envs, obs_dim], rewards
    [num_envs] float64, terminated [num_envs] bool, truncated [num_envs] bool); ``success``
    [num_envs] bool after each step. A failed call closes the environment.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        num_envs: int,
        max_episode_steps: int,
        num_workers: int | None = None,
        context: str | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.num_workers = min(num_workers or available_cpus(), num_envs)
        self.bounds = shard_bounds(num_envs, self.num_workers)
        self.success = np.zeros(num_envs, dtype=bool)
        self.closed = False
        self._pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        payload = _payload(make_env)
        ctx = multiprocessing.get_context(context or default_context())
        try:
            for start, stop in self.bounds:
                parent_end, child_end = ctx.Pipe()
                process = ctx.Process(  # type: ignore[attr-defined]  # (typeshed's BaseContext)
                    target=_worker,
                    args=(child_end, payload, stop - start, max_episode_steps, start),
                    name=f"ProcessBatchEnv-{start}-{stop - 1}",
                    daemon=True,
                )
                process.start()
                child_end.close()  # the worker holds the only write end: EOF when it dies
                self._pipes.append(parent_end)
                self.processes.append(process)
            spaces = self._call([None] * self.num_workers, startup=True)
        except BaseException:
            self.close(terminate=True)
            raise
        self.observation_space: gym.Space = spaces[0][0]
        self.action_space: gym.Space = spaces[0][1]

    # ------------------------------------------------------------------ the batch interface

    def reset(self, tasks: Sequence[Task], seed: int | None = None) -> np.ndarray:
        """Observations [num_envs, obs_dim]; env i gets tasks[i] and seed + i."""
        if len(tasks) != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} tasks, got {len(tasks)}")
        messages = [
            ("reset", (list(tasks[a:b]), None if seed is None else seed + a))
            for a, b in self.bounds
        ]
        observations = self._call(messages)
        self.success[:] = False
        return np.concatenate(observations)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """actions [num_envs, *act_shape] -> (observations, rewards, terminated, truncated)."""
        actions = np.asarray(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"step needs {self.num_envs} actions, got {len(actions)}")
        replies = self._call([("step", actions[a:b]) for a, b in self.bounds])
        obs, rewards, terminated, truncated, success = (
            np.concatenate(parts) for parts in zip(*replies, strict=True)
        )
        self.success[:] = success
        return obs, rewards, terminated, truncated

    def close(self, terminate: bool = False) -> None:
        """Stops the workers: asks them to close their environments (waiting up to
        CLOSE_TIMEOUT_S), or with `terminate` (and for any that do not stop) terminates them.
        Closing again is harmless."""
        if self.closed:
            return
        self.closed = True
        if not terminate:
            for pipe in self._pipes:
                try:
                    pipe.send(("close", None))
                except OSError:
                    pass
            deadline = time.monotonic() + CLOSE_TIMEOUT_S
            for process in self.processes:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout=CLOSE_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self._pipes:
            pipe.close()

    # ------------------------------------------------------------------ messaging

    def _call(self, messages: Sequence[Any], startup: bool = False) -> list[Any]:
        """Sends messages[w] to worker w (none at start-up) and returns their results in worker
        order; on any failure closes this env (terminating the workers) and raises."""
        if self.closed:
            raise TaskFamilyError("the environment worker processes are closed")
        try:
            if not startup:
                for w, message in enumerate(messages):
                    try:
                        self._pipes[w].send(message)
                    except OSError as error:
                        raise self._died(w) from error
            replies = self._receive()
            for kind, value in replies:
                if kind == "env_failure":
                    raise EnvironmentFailure(*value)
                if kind == "error":
                    raise TaskFamilyError(value)
            return [value for _, value in replies]
        except BaseException:
            self.close(terminate=True)
            raise

    def _receive(self) -> list[tuple[str, Any]]:
        """One reply per worker, in worker order; WorkerDiedError as soon as one dies."""
        replies: dict[int, tuple[str, Any]] = {}
        while len(replies) < self.num_workers:
            pending = [w for w in range(self.num_workers) if w not in replies]
            by_pipe = {id(self._pipes[w]): w for w in pending}
            by_sentinel = {self.processes[w].sentinel: w for w in pending}
            waitables = [self._pipes[w] for w in pending] + list(by_sentinel)
            for ready in wait(waitables):
                w = by_sentinel[ready] if isinstance(ready, int) else by_pipe[id(ready)]
                if w in replies:
                    continue
                pipe = self._pipes[w]
                if isinstance(ready, int) and not pipe.poll():  # exited without answering
                    raise self._died(w)
                try:
                    replies[w] = pipe.recv()
                except (EOFError, OSError) as error:
                    raise self._died(w) from error
        return [replies[w] for w in range(self.num_workers)]

    def _died(self, w: int) -> WorkerDiedError:
        """The error for worker w having died, after terminating every worker."""
        process = self.processes[w]
        process.join(timeout=1.0)
        code = process.exitcode
        if code is None:
            how = "its pipe closed"
        elif code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        self.close(terminate=True)
        start, stop = self.bounds[w]
        return WorkerDiedError(
            f"the environment worker process of environments {start}-{stop - 1} died ({how}); "
            f"all {self.num_workers} workers closed"
        )
