"""Tests of `maml_rl.process_env.ProcessBatchEnv` (backend ``procs``): the same batches as
``sync``, failures as one-line errors naming the environment, dead workers within seconds.

The helper families live in tests/process_env_helpers.py, which the worker processes import.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_policy
from process_env_helpers import (
    FAILING_ENV,
    FAILING_STEP,
    SEED,
    BrokenMakeEnv,
    FailsAtStep5,
    GymOnly,
    NativeButPrefersProcs,
    PrefersGpu,
    PrefersProcs,
    ReportsSuccess,
    SamplerReadsSuccess,
)

import maml_rl.process_env
from maml_rl.config import from_dict
from maml_rl.policy import GaussianMLPPolicy, parameters_of
from maml_rl.process_env import ProcessBatchEnv, shard_bounds
from maml_rl.sampler import Sampler
from maml_rl.tasks import BatchEnv, TaskFamilyError, make_family
from maml_rl.types import Batch
from maml_rl.vector import (
    EnvironmentFailure,
    GymBatchEnv,
    WorkerDiedError,
    make_batch_env,
    resolved_backend,
)
from maml_rl_envs.navigation import Navigation2D, NavigationTask


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """`procs` batch envs built without num_workers get 2 workers, on any machine."""
    monkeypatch.setattr(maml_rl.process_env, "available_cpus", lambda: 2)


def all_stopped(env: ProcessBatchEnv) -> bool:
    return all(not process.is_alive() for process in env.processes)


def test_shards_are_contiguous_and_balanced() -> None:
    assert shard_bounds(9, 2) == [(0, 5), (5, 9)]
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(2, 2) == [(0, 1), (1, 2)]


@pytest.mark.parametrize("per_task", [False, True])
def test_sampler_on_procs_equals_sync(two_workers: None, per_task: bool) -> None:
    """3 tasks x 3 trajectories over 2 workers (shards of 5 and 4): bit-identical batches, also
    for a second sample on the same workers with another seed."""
    family = make_family("navigation", {"max_episode_steps": 20})
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    policy, theta = make_policy(0)
    params = {n: torch.stack([p + 0.1 * i for i in range(3)]) for n, p in theta.items()}
    params = params if per_task else theta
    samplers = {
        backend: Sampler(family, policy, 3, dtype=torch.float64, backend=backend)
        for backend in ("sync", "procs")
    }
    try:
        for seed in (SEED, SEED + 1):
            batches = {b: s.sample(params, tasks, seed, per_task) for b, s in samplers.items()}
            for field in dataclasses.fields(Batch):
                sync, procs = (getattr(batches[b], field.name) for b in ("sync", "procs"))
                assert (sync is None and procs is None) or torch.equal(sync, procs), (seed, field)
        env = samplers["procs"]._envs[9]
        assert isinstance(env, ProcessBatchEnv) and env.bounds == [(0, 5), (5, 9)]
    finally:
        for sampler in samplers.values():
            sampler.close()
    assert env.closed and all_stopped(env)


def test_an_env_that_raises_is_named_by_its_global_index(two_workers: None) -> None:
    """Env 4 (task 1, trajectory 1; the last of the first worker's shard 0-4) raises at step 5:
    the same one-line message as on sync, and the workers stop."""
    family = FailsAtStep5()
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    policy = GaussianMLPPolicy(2, 2, (4,), "tanh").double()
    messages = {}
    for backend in ("sync", "procs"):
        sampler = Sampler(family, policy, 3, dtype=torch.float64, backend=backend)
        with pytest.raises(TaskFamilyError) as error:
            sampler.sample(parameters_of(policy), tasks, SEED, per_task=False)
        messages[backend] = str(error.value)
        env = sampler._envs[9]
        sampler.close()
    assert (
        f"task 1 ({tasks[1]}), trajectory 1, step 5: RuntimeError: simulator exploded"
        in (messages["procs"])
    )
    assert messages["procs"] == messages["sync"]
    assert "\n" not in messages["procs"]
    assert isinstance(env, ProcessBatchEnv) and env.closed and all_stopped(env)


@pytest.mark.parametrize("context", ["forkserver", "spawn"])
def test_the_failing_env_index_is_global_in_every_shard(context: str) -> None:
    family = FailsAtStep5()
    tasks = family.sample_tasks(6, np.random.default_rng(0))
    env = ProcessBatchEnv(family.make_env, 6, 12, num_workers=3, context=context)  # 0-1, 2-3, 4-5
    env.reset(tasks, seed=SEED)
    with pytest.raises(EnvironmentFailure) as error:
        for _ in range(FAILING_STEP + 1):
            env.step(np.zeros((6, 2)))
    assert error.value.index == FAILING_ENV
    assert error.value.cause == "RuntimeError: simulator exploded"
    assert env.closed and all_stopped(env)
    with pytest.raises(TaskFamilyError, match="closed"):
        env.step(np.zeros((6, 2)))
    env.close()  # closing again is harmless


def test_a_killed_worker_is_a_clear_error_within_seconds_and_leaves_no_process() -> None:
    family = GymOnly()
    tasks = family.sample_tasks(6, np.random.default_rng(0))
    env = ProcessBatchEnv(family.make_env, 6, 12, num_workers=3)
    env.reset(tasks, seed=SEED)
    env.step(np.zeros((6, 2)))
    pid = env.processes[1].pid
    assert pid is not None  # a started worker
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerDiedError) as error:
        for _ in range(5):
            env.step(np.zeros((6, 2)))
    assert time.monotonic() - start < 5.0
    message = str(error.value)
    assert "\n" not in message
    assert "environments 2-3 died (killed by SIGKILL)" in message, message
    assert env.closed and all_stopped(env)


def test_success_is_gathered_in_global_order() -> None:
    family = ReportsSuccess()
    tasks = family.sample_tasks(7, np.random.default_rng(0))
    procs = ProcessBatchEnv(family.make_env, 7, 12, num_workers=3)  # shards 0-2, 3-4, 5-6
    sync = GymBatchEnv(family.make_env, 7, 12)
    try:
        for env in (procs, sync):
            env.reset(tasks, seed=11)  # env i has seed 11 + i: divisible by 3 for i = 1, 4
        assert not procs.success.any()
        expected = np.isin(np.arange(7), [1, 4])
        rng = np.random.default_rng(0)
        for t in range(1, 4):
            actions = rng.normal(size=(7, 2))
            for a, b in zip(procs.step(actions), sync.step(actions), strict=True):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(procs.success, sync.success)
            np.testing.assert_array_equal(procs.success, expected & (t >= 2))
        procs.reset(tasks, seed=11)
        assert not procs.success.any()
    finally:
        procs.close()
        sync.close()


def test_the_sampler_reads_success_from_procs_as_from_sync(two_workers: None) -> None:
    family = SamplerReadsSuccess()
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    policy = GaussianMLPPolicy(2, 2, (4,), "tanh").double()
    batches = {}
    for backend in ("sync", "procs"):
        sampler = Sampler(family, policy, 3, dtype=torch.float64, backend=backend)
        try:
            batches[backend] = sampler.sample(parameters_of(policy), tasks, 2, per_task=False)
        finally:
            sampler.close()
    success, reference = batches["procs"].success, batches["sync"].success
    assert success is not None and reference is not None and torch.equal(success, reference)
    # envs reset with seeds 2..10: those divisible by 3 (envs 1, 4, 7) succeed from step 2 on
    expected = torch.zeros_like(success)
    expected[1:, [0, 1, 2], [1, 1, 1]] = 1.0
    assert torch.equal(success, expected * batches["sync"].mask)


def test_a_make_env_that_raises_is_one_line_and_leaves_no_process() -> None:
    with pytest.raises(TaskFamilyError) as error:
        ProcessBatchEnv(BrokenMakeEnv().make_env, 4, 12, num_workers=2)
    message = str(error.value)
    assert "make_env failed" in message and "ValueError: no simulator licence" in message
    assert "\n" not in message


def test_make_env_that_plain_pickle_refuses_travels_by_cloudpickle() -> None:
    horizon = 5

    def make_env() -> gym.Env:  # a closure: pickle refuses it
        return Navigation2D(max_episode_steps=horizon).make_env()

    tasks = [NavigationTask((0.2, 0.1)), NavigationTask((-0.3, 0.0)), NavigationTask((0.0, 0.4))]
    procs = ProcessBatchEnv(make_env, 3, horizon, num_workers=2)
    sync = GymBatchEnv(make_env, 3, horizon)
    try:
        np.testing.assert_array_equal(procs.reset(tasks, 0), sync.reset(tasks, 0))
        actions = np.full((3, 2), 0.05)
        for a, b in zip(procs.step(actions), sync.step(actions), strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        procs.close()
        sync.close()


def test_auto_follows_the_familys_sampler_backend(two_workers: None) -> None:
    preferring = PrefersProcs()
    assert resolved_backend(preferring, "auto") == "procs"
    env = make_batch_env(preferring, 3, "auto")
    try:
        assert isinstance(env, ProcessBatchEnv) and env.num_workers == 2
        assert isinstance(env, BatchEnv)
        assert env.max_episode_steps == 12
    finally:
        env.close()
    assert all_stopped(env)
    plain = GymOnly()
    assert resolved_backend(plain, "auto") == "sync"
    assert isinstance(make_batch_env(plain, 3, "auto"), GymBatchEnv)
    native = NativeButPrefersProcs()  # a native batch env wins
    assert resolved_backend(native, "auto") == "native"
    assert not isinstance(make_batch_env(native, 3, "auto"), ProcessBatchEnv | GymBatchEnv)
    assert resolved_backend(preferring, "sync") == "sync"
    with pytest.raises(TaskFamilyError, match="sampler_backend must be one of"):
        make_batch_env(PrefersGpu(), 3, "auto")


def test_config_accepts_the_procs_sampler() -> None:
    assert from_dict({"sampler": "procs"}).sampler == "procs"
