"""Sampling on a Ray cluster (``sampler: ray``): a meta-batch's tasks split over Ray actors.

Each actor holds a local `Sampler` (a vectorized environment batch of the same kind as on one
machine, on the ``auto`` backend, and a copy of the policy architecture on the CPU). One call
of `RaySampler.sample` is one phase:

* the N tasks are cut into contiguous slices, one per actor;
* parameters go out once per phase: shared theta is put into the object store once and every
  actor reads it; per-task phi [N, *shape] is sliced, each actor receiving its tasks' rows;
* each actor samples its slice with ``first_task`` set to the slice's start, so every task's
  environments and action noise are seeded as the local sampler seeds them (`Sampler.sample`):
  the same seed gives the same trajectories, whichever actor runs a task;
* batches come back as numpy arrays and are joined with `Batch.concat_tasks`.

Faults: an actor that dies while sampling is reported (once, one line, through `on_event`),
replaced by a fresh actor for later phases, and its slice is retried once on another actor;
a second failure raises `RaySamplerError`. A phase that takes longer than ``timeout_s``
raises `RaySamplerError` too, and so do actors the cluster cannot place (more CPUs than it
has, or none free within ``timeout_s``) and a ``ray_address`` where no Ray cluster answers:
the run never hangs. A local instance (no ``ray_address``) binds to 127.0.0.1 only.

`traffic` counts the bytes that crossed the object store in the last phase and in total.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn

from maml_rl.errors import RaySamplerError
from maml_rl.runtime import ENVIRONMENT, SWITCH, configure_process
from maml_rl.sampler import Sampler
from maml_rl.tasks import Task, TaskFamily, TaskFamilyError
from maml_rl.types import Batch, Params

START_TIMEOUT_S = 30.0
"""The shortest wait for actors to start (building environments can outlast a short phase
timeout); `ray_timeout_s` when longer."""
LOOPBACK = "127.0.0.1"
LOOPBACK_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""The address a local Ray instance binds to: nothing it starts listens beyond this machine."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise RaySamplerError(
            "sampler 'ray' needs Ray: pip install \"maml-rl[ray]\" (or pip install 'ray>=2.9')"
        ) from error
    return ray


class SamplerActor:
    """The body of one Ray actor: a local `Sampler` on the CPU returning numpy batches."""

    def __init__(
        self,
        family: TaskFamily,
        policy: nn.Module,
        trajectories_per_task: int,
        dtype: torch.dtype,
        backend: str,
        num_threads: int,
        max_envs: int | None = None,
    ) -> None:
        configure_process()  # the allocator; the variables came with the actor's environment
        torch.set_num_threads(num_threads)
        self.sampler = Sampler(
            family,
            policy.to("cpu"),
            trajectories_per_task,
            "cpu",
            dtype,
            backend=backend,
            env_threads=num_threads,
            max_envs=max_envs,
        )

    def ready(self) -> bool:
        """Answers once the actor is constructed (RaySampler waits for it)."""
        return True

    def sample(
        self,
        params: dict[str, np.ndarray],
        tasks: Sequence[Task],
        seed: int,
        per_task: bool,
        first_task: int,
        deterministic: bool = False,
    ) -> dict[str, np.ndarray]:
        torch_params = {n: torch.from_numpy(np.array(p)) for n, p in params.items()}  # copies
        batch = self.sampler.sample(torch_params, tasks, seed, per_task, first_task, deterministic)
        values = {f.name: getattr(batch, f.name) for f in fields(batch)}
        return {name: value.numpy() for name, value in values.items() if value is not None}


@dataclass
class Traffic:
    """Bytes through the object store: parameters and tasks out, batches back."""

    sent: int = 0
    received: int = 0
    total_sent: int = 0
    total_received: int = 0


def _nbytes(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    return 0


class RaySampler:
    """A `Sampler` whose phases run on `num_actors` Ray actors (see the module docstring).

    Args:
        family, policy, trajectories_per_task, device, dtype: as for `Sampler`; batches are
            returned on `device`.
        num_actors: actors to start; each gets `actor_cpus` CPUs and as many env threads.
        address: a running cluster (``ray start --head`` prints it, e.g. ``HOST:6379``), or
            None to join the instance already initialised in this process, or start a local one.
        timeout_s: the longest a phase may take before `RaySamplerError`.
        max_envs: the most environments each actor steps at once (`Sampler`'s max_envs).
        on_event: called with one-line messages (actor deaths and retries).
    """

    def __init__(
        self,
        family: TaskFamily,
        policy: nn.Module,
        trajectories_per_task: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        num_actors: int = 2,
        actor_cpus: int = 1,
        address: str | None = None,
        timeout_s: float = 600.0,
        on_event: Callable[[str], None] | None = None,
        max_envs: int | None = None,
    ) -> None:
        if num_actors < 1:
            raise RaySamplerError(f"ray_num_actors must be >= 1, got {num_actors}")
        ray = _ray()
        self.family, self.policy = family, policy
        self.trajectories_per_task = trajectories_per_task
        self.device, self.dtype = torch.device(device), dtype
        self.timeout_s, self.on_event = timeout_s, on_event or (lambda message: None)
        self.traffic = Traffic()
        self._started_ray = False
        if not ray.is_initialized():
            if address:
                _check_reachable(address, min(timeout_s, 10.0))
            # a local instance, or a cluster on this machine's loopback: stay on loopback
            local = {}
            if _on_loopback(address):
                bind_to_loopback(ray)
                local = {"_node_ip_address": LOOPBACK}
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    runtime_env={"env_vars": _actor_environment()},
                    **local,
                )
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = address or "a new local instance"
                message = " ".join(str(error).split())[:200]
                raise RaySamplerError(f"cannot start Ray on {where}: {message}") from error
            self._started_ray = True
        self.actors: list[Any] = []
        try:
            _check_cpus(num_actors, actor_cpus, ray.cluster_resources().get("CPU", 0.0))
            self._remote = ray.remote(num_cpus=actor_cpus)(SamplerActor)
            cpu_policy = _cpu_copy(policy)
            self._actor_args = (family, cpu_policy, trajectories_per_task, dtype, "auto",
                                actor_cpus, max_envs)  # fmt: skip
            self.actors = [self._new_actor() for _ in range(num_actors)]
            self._wait_ready(self.actors, f"{num_actors} actors of {actor_cpus} CPU(s) each")
        except BaseException:
            self.close()  # no actor or local instance outlives a failed start
            raise

    def _new_actor(self) -> Any:
        return self._remote.remote(*self._actor_args)

    def _wait_ready(self, actors: Sequence[Any], what: str) -> None:
        """Wait until `actors` are constructed; RaySamplerError (one line) past the timeout,
        naming the CPUs the cluster has free (an actor Ray cannot place waits forever)."""
        ray = _ray()
        refs = [actor.ready.remote() for actor in actors]
        limit = max(self.timeout_s, START_TIMEOUT_S)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=limit)
        if len(ready) < len(refs):
            free = ray.available_resources().get("CPU", 0.0)
            raise RaySamplerError(
                f"Ray could not start {what} within {limit:g} s ({len(ready)} of "
                f"{len(refs)} started; {free:g} CPUs free in the cluster): lower "
                "ray_num_actors or ray_actor_cpus, or add nodes"
            )
        ray.get(ready)  # an actor whose construction raised raises here

    @torch.no_grad()
    def sample(
        self,
        params: Params,
        tasks: Sequence[Task],
        seed: int,
        per_task: bool,
        first_task: int = 0,
        deterministic: bool = False,
    ) -> Batch:
        """As `Sampler.sample`: a Batch [T, N, K, ...] on the sampler's device."""
        ray = _ray()
        num_tasks = len(tasks)
        bounds = np.linspace(0, num_tasks, min(len(self.actors), num_tasks) + 1).astype(int)
        slices = [(int(a), int(b)) for a, b in pairwise(bounds)]
        host = {n: p.detach().to("cpu").numpy() for n, p in params.items()}
        shared = None if per_task else ray.put(host)
        self.traffic.sent = 0 if per_task else _nbytes(host)
        self.traffic.received = 0

        def submit(actor: Any, index: int) -> Any:
            start, stop = slices[index]
            part = shared if shared is not None else {n: p[start:stop] for n, p in host.items()}
            if shared is None:
                self.traffic.sent += _nbytes(part)
            return self._submit(
                actor,
                part,
                list(tasks[start:stop]),
                seed,
                per_task,
                first_task + start,
                deterministic,
            )

        pending = {submit(self.actors[i], i): i for i in range(len(slices))}
        results: dict[int, dict[str, np.ndarray]] = {}
        retried: set[int] = set()
        deadline = time.monotonic() + self.timeout_s
        while pending:
            left = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not ready:
                raise RaySamplerError(
                    f"Ray actors returned no batch within {self.timeout_s:g} s "
                    f"({len(pending)} of {len(slices)} task slices outstanding)"
                )
            ref = ready[0]
            index = pending.pop(ref)
            try:
                results[index] = ray.get(ref)
            except ray.exceptions.RayTaskError as error:  # the actor's sampler raised
                if isinstance(error.cause, TaskFamilyError):  # a broken family: one line
                    raise TaskFamilyError(str(error.cause)) from None
                raise
            except ray.exceptions.RayActorError as error:
                start, stop = slices[index]
                if index in retried:
                    raise RaySamplerError(
                        f"Ray actors died twice while sampling tasks {start}..{stop - 1}: "
                        f"{type(error).__name__}"
                    ) from error
                retried.add(index)
                survivor = self._replace_dead(index)
                self.on_event(
                    f"Ray actor {index} died while sampling tasks {start}..{stop - 1}; "
                    "retrying them on another actor"
                )
                pending[submit(survivor, index)] = index
        self.traffic.received = sum(_nbytes(results[i]) for i in results)
        self.traffic.total_sent += self.traffic.sent
        self.traffic.total_received += self.traffic.received
        batches = [
            Batch(**{n: torch.from_numpy(np.array(a)) for n, a in results[i].items()})
            for i in range(len(slices))
        ]
        return Batch.concat_tasks(batches).to(self.device)

    def _submit(
        self,
        actor: Any,
        params: Any,
        tasks: list[Task],
        seed: int,
        per_task: bool,
        first_task: int,
        deterministic: bool = False,
    ) -> Any:
        """Start one actor's share of a phase; returns the object ref of its batch."""
        return actor.sample.remote(params, tasks, seed, per_task, first_task, deterministic)

    def _replace_dead(self, index: int) -> Any:
        """Replace actor `index` by a fresh one and return it to retry on: the other actors may
        have died in the same fault (a node lost), the fresh one has not."""
        self.actors[index] = self._new_actor()
        return self.actors[index]

    def close(self) -> None:
        ray = _ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when a HOST:PORT cluster address does not answer, or answers
    but is no Ray cluster (no gRPC server, e.g. an HTTP server): Ray itself retries for
    minutes. Other forms ("auto", "local") are left to Ray."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise RaySamplerError(
            f"cannot reach the Ray cluster at {address} ({error.strerror or error}); start it "
            "with `ray start --head` and pass the address it prints as ray_address"
        ) from error
    if not _speaks_grpc(f"{host}:{port}", timeout_s):
        raise RaySamplerError(
            f"{address} answers but is not a Ray cluster (no Ray GCS there within "
            f"{timeout_s:g} s); pass the address that `ray start --head` prints as ray_address"
        )


def _speaks_grpc(target: str, timeout_s: float) -> bool:
    """Whether a gRPC (HTTP/2) channel to target becomes ready: Ray's GCS does, an HTTP/1
    server or anything else does not. True when grpc (a Ray dependency) is missing."""
    try:
        import grpc
    except ImportError:
        return True
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def bind_to_loopback(ray: Any) -> None:
    """Make Ray keep 127.0.0.1 as this node's address (it replaces a loopback
    ``_node_ip_address`` by the machine's network address unless clusters are "disabled",
    as on macOS and Windows): the driver, GCS, raylets and workers then listen and connect on
    loopback only. Set for this process (Ray reads the flag at call time) and its children."""
    os.environ[LOOPBACK_FLAG] = "0"
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        constants.ENABLE_RAY_CLUSTER = False


def _on_loopback(address: str | None) -> bool:
    """No address (a new local instance) or a HOST:PORT whose host is a loopback address."""
    if not address:
        return True
    host = address.split("://", 1)[-1].rpartition(":")[0] or address
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _check_cpus(num_actors: int, actor_cpus: int, cluster_cpus: float) -> None:
    """Refuse, in one line, actors that need more CPUs than the whole cluster has."""
    needed = num_actors * actor_cpus
    if needed > cluster_cpus:
        raise RaySamplerError(
            f"ray_num_actors={num_actors} x ray_actor_cpus={actor_cpus} need {needed} CPUs, the "
            f"Ray cluster has {cluster_cpus:g}: lower them or add nodes"
        )


def _cpu_copy(policy: nn.Module) -> nn.Module:
    return copy.deepcopy(policy).to("cpu")


def _actor_environment() -> dict[str, str]:
    """Environment of the actors of a local instance: this process's import path (plug-in
    families given as module:Class and policies as module:callable: the working directory,
    PYTHONPATH and the folders added to sys.path outside the Python installation, such as a
    run's recorded import roots) and its process settings (maml_rl/runtime.py: MKL's
    reproducibility mode, thread waiting, their opt-outs), which the actors apply in turn."""
    installation = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    added = [
        p for p in sys.path
        if p and os.path.isdir(p)
        and not any(os.path.realpath(p).startswith(root) for root in installation)
    ]  # fmt: skip
    parts = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    parts += [p for p in added if p not in parts]
    names = (*ENVIRONMENT, SWITCH, "MAML_RL_MALLOC")
    return {"PYTHONPATH": os.pathsep.join(parts)} | {
        name: os.environ[name] for name in names if name in os.environ
    }
