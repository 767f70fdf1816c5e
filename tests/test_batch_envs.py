"""Batch-environment backends: native MuJoCo envs equal Gymnasium's, step for step and bit for
bit; the async backend equals the sync one; the sampler gives one batch on every backend.

Native envs are compared with exact equality: their physics, observation and reward are the
same floating-point operations as Gymnasium's (e.g. the control cost in float32), so any
difference, however small, is a bug.
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any, TypeAlias, cast

import numpy as np
import pytest
import torch
from conftest import usable_families

from maml_rl.oracle import OracleBatchEnv, OracleFamily
from maml_rl.policy import GaussianMLPPolicy, parameters_of
from maml_rl.sampler import Sampler
from maml_rl.tasks import BatchEnv, TaskFamily, TaskFamilyError, make_family
from maml_rl.vector import AsyncGymBatchEnv, GymBatchEnv, WorkerDiedError, make_batch_env
from maml_rl_envs import mujoco_batch as mujoco_batch_module
from maml_rl_envs.ant import AntGoal
from maml_rl_envs.halfcheetah import HalfCheetahDir, HalfCheetahVel
from maml_rl_envs.mujoco_base import MujocoFamily
from maml_rl_envs.mujoco_batch import MujocoBatchEnv, stack_tasks
from maml_rl_envs.navigation import (
    Navigation2D,
    Navigation2DBatch,
    Navigation2DEnv,
    NavigationTask,
)

# the families of envs/ that the tests below step natively
NativeFamily: TypeAlias = MujocoFamily | Navigation2D


def native_family(name: str, env_kwargs: dict[str, Any] | None = None) -> NativeFamily:
    """`make_family(name, env_kwargs)`, one of the families stepped natively here."""
    family = make_family(name, env_kwargs)
    assert isinstance(family, NativeFamily), family
    return family


NATIVE = sorted(
    name
    for name in usable_families()
    if callable(getattr(make_family(name), "make_batch_env", None))
)
# mujoco >= 4.0 has mujoco.batch; with an older MuJoCo the tests follow the "threads" fallback
# (and test_fallback_without_mujoco_batch checks the fallback on any version)
HAS_BATCH = mujoco_batch_module.mujoco_batch is not None
STEPPERS = ("batch", "threads") if HAS_BATCH else ("threads",)
AUTO = "batch" if HAS_BATCH else "threads"
NATIVE_CASES = [
    (name, stepper)
    for name in NATIVE
    for stepper in (
        STEPPERS
        if "stepper" in inspect.signature(native_family(name).make_batch_env).parameters
        else (None,)
    )
]
SEED = 7
NUM_ENVS = 4
NUM_STEPS = 30
# the ant's torso dips below 0.55 under std-10 actions: some episodes terminate, some do not
ANT_FALLS = {"healthy_z_range": (0.55, 1.0)}


def random_actions(family: NativeFamily, num_steps: int, num_envs: int) -> np.ndarray:
    """Gaussian actions with std = the action bound (~30% of MuJoCo actions hit the clip)."""
    high = np.asarray(family.action_space.high, dtype=np.float64)
    rng = np.random.default_rng(1)
    return rng.normal(0.0, 1.0, (num_steps, num_envs, *high.shape)) * high


def gymnasium_rollouts(
    family: TaskFamily, tasks: list, seed: int, actions: np.ndarray
) -> tuple[np.ndarray, list[list[tuple[Any, ...]]]]:
    """Env i of `family.make_env()` reset with seed + i and task i, stepped until it ends:
    the first observations [B, D] and per env the (obs, reward, terminated, truncated)."""
    first: list[np.ndarray] = []
    steps: list[list[tuple[Any, ...]]] = []
    for i, task in enumerate(tasks):
        env = family.make_env()
        obs, _ = env.reset(seed=seed + i, options={"task": task})
        first.append(obs)
        steps.append([])
        for action in actions[:, i]:
            obs, reward, terminated, truncated, _ = env.step(action)
            steps[i].append((obs, reward, terminated, truncated))
            if terminated or truncated:
                break
        env.close()
    return np.stack(first), steps


def assert_batch_env_equals_gymnasium(
    family: NativeFamily, stepper: str | None, num_steps: int = NUM_STEPS
) -> list[int]:
    """Runs both; returns the episode lengths. After an episode ends, the batch env must report
    reward 0 and keep its terminated flag."""
    tasks = family.sample_tasks(NUM_ENVS, np.random.default_rng(0))
    actions = random_actions(family, num_steps, NUM_ENVS)
    reference_first, reference = gymnasium_rollouts(family, tasks, SEED, actions)
    if stepper is None:
        env = family.make_batch_env(NUM_ENVS)
    else:
        assert isinstance(family, MujocoFamily)  # the families with steppers
        env = family.make_batch_env(NUM_ENVS, stepper)
    try:
        first = env.reset(tasks, seed=SEED)
        np.testing.assert_array_equal(first, reference_first)
        for t in range(num_steps):
            obs, reward, terminated, truncated = env.step(actions[t])
            for i, steps in enumerate(reference):
                if t < len(steps):
                    ref_obs, ref_reward, ref_terminated, ref_truncated = steps[t]
                    np.testing.assert_array_equal(obs[i], ref_obs, err_msg=f"step {t}, env {i}")
                    assert reward[i] == ref_reward, (t, i)
                    assert (terminated[i], truncated[i]) == (ref_terminated, ref_truncated)
                else:
                    assert reward[i] == 0.0
                    assert terminated[i] == steps[-1][2]
    finally:
        env.close()
    return [len(steps) for steps in reference]


@pytest.mark.parametrize(("name", "stepper"), NATIVE_CASES)
def test_native_batch_env_equals_gymnasium(name: str, stepper: str | None) -> None:
    lengths = assert_batch_env_equals_gymnasium(native_family(name), stepper)
    assert lengths == [NUM_STEPS] * NUM_ENVS


@pytest.mark.parametrize("stepper", STEPPERS)
def test_ant_terminations_are_gymnasiums(stepper: str) -> None:
    family = native_family("ant-vel", ANT_FALLS)
    lengths = assert_batch_env_equals_gymnasium(family, stepper)
    ended = [n for n in lengths if n < NUM_STEPS]
    assert 0 < len(ended) < NUM_ENVS and len(set(ended)) == len(ended), lengths


def test_ant_truncation_at_the_horizon() -> None:
    family = native_family("ant-dir", {"max_episode_steps": 5})
    lengths = assert_batch_env_equals_gymnasium(family, "threads", num_steps=7)
    assert lengths == [5] * NUM_ENVS


def test_reset_without_seed_continues_each_envs_generator() -> None:
    family = cast(HalfCheetahVel, make_family("halfcheetah-vel"))
    tasks = family.sample_tasks(2, np.random.default_rng(0))
    env = family.make_batch_env(2)
    first = env.reset(tasks, seed=3)
    second = env.reset(tasks)
    assert not np.array_equal(first, second)
    for i, task in enumerate(tasks):
        single = family.make_env()
        np.testing.assert_array_equal(single.reset(seed=3 + i, options={"task": task})[0], first[i])
        np.testing.assert_array_equal(single.reset()[0], second[i])
        single.close()
    env.close()


def test_auto_stepper_and_unknown_stepper() -> None:
    cheetah = cast(HalfCheetahDir, make_family("halfcheetah-dir"))
    assert cheetah.make_batch_env(2).stepper == AUTO
    ant = cast(AntGoal, make_family("ant-goal"))
    assert ant.make_batch_env(2).stepper == "threads"  # needs cfrc_ext
    with pytest.raises(ValueError, match="stepper"):
        cheetah.make_batch_env(2, stepper="rollout")


def test_stack_tasks() -> None:
    family = cast(AntGoal, make_family("ant-goal"))
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    stacked = stack_tasks(tasks)
    np.testing.assert_array_equal(stacked.goal, np.array([t.goal for t in tasks]))
    info: dict[str, Any] = {k: np.arange(3.0) for k in ("x_position", "y_position")}
    info |= {"reward_ctrl": -0.1, "reward_contact": -0.2, "reward_survive": 0.05}
    expected = [
        family.reward(task, {k: v[i] if np.ndim(v) else v for k, v in info.items()})
        for i, task in enumerate(tasks)
    ]
    np.testing.assert_array_equal(family.reward(stacked, info), expected)
    with pytest.raises(TypeError, match="different types"):
        stack_tasks([tasks[0], NavigationTask(goal=(0.0, 0.0))])


# ------------------------------------------------------------------------- factory


class GenericOnly:
    """A navigation family without make_batch_env (a plug-in family)."""

    def __init__(self, family: Navigation2D) -> None:
        self._family = family
        self.max_episode_steps = family.max_episode_steps

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[NavigationTask]:
        return self._family.sample_tasks(n, rng)

    def make_env(self) -> Navigation2DEnv:
        return self._family.make_env()


def test_fallback_without_mujoco_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """MuJoCo < 4.0 has no mujoco.batch: "auto" steps with threads, "batch" is refused in one
    line, and the threads stepper still reproduces Gymnasium."""
    monkeypatch.setattr(mujoco_batch_module, "mujoco_batch", None)
    family = cast(HalfCheetahDir, make_family("halfcheetah-dir", {"max_episode_steps": 5}))
    assert family.make_batch_env(2).stepper == "threads"
    with pytest.raises(ValueError, match=r"stepper .batch. needs mujoco >= 4\.0"):
        family.make_batch_env(2, stepper="batch")
    assert assert_batch_env_equals_gymnasium(family, None, num_steps=5) == [5] * NUM_ENVS


def test_factory_backends() -> None:
    cheetah = make_family("halfcheetah-vel", {"max_episode_steps": 3})
    native = make_batch_env(cheetah, 2)
    assert isinstance(native, MujocoBatchEnv) and native.stepper == AUTO
    threads = make_batch_env(cheetah, 2, "threads")
    assert isinstance(threads, MujocoBatchEnv) and threads.stepper == "threads"
    sync = make_batch_env(cheetah, 2, "sync")
    assert isinstance(sync, GymBatchEnv) and sync.max_episode_steps == 3
    generic = GenericOnly(Navigation2D())
    assert isinstance(make_batch_env(generic, 2), GymBatchEnv)
    with pytest.raises(TaskFamilyError, match="no native"):
        make_batch_env(generic, 2, "native")
    with pytest.raises(TaskFamilyError, match="threads"):
        make_batch_env(Navigation2D(), 2, "threads")
    with pytest.raises(TaskFamilyError, match="unknown sampler backend"):
        make_batch_env(cheetah, 2, "processes")
    oracle = make_batch_env(OracleFamily(cheetah), 2, "threads")
    assert isinstance(oracle, OracleBatchEnv) and oracle.env.stepper == "threads"
    for env in (native, threads, sync, oracle):
        env.close()


# --------------------------------------------------------------------------- async


def test_async_equals_sync_and_survives_autoreset() -> None:
    """Two agents reach their goals after 1 and 3 steps; stepping on through Gymnasium's
    next-step autoreset leaves their reported values frozen, as in the sync backend."""
    family = Navigation2D(max_episode_steps=8)
    tasks = [NavigationTask((0.1, 0.0)), NavigationTask((0.3, 0.0)), NavigationTask((0.4, 0.4))]
    asynchronous_env = AsyncGymBatchEnv(family.make_env, 3, 8)
    envs: list[BatchEnv] = [GymBatchEnv(family.make_env, 3, 8), asynchronous_env]
    try:
        results = []
        for env in envs:
            # the first observations, then each step's (obs, reward, terminated, truncated)
            steps: list[Any] = [env.reset(tasks, seed=SEED)]
            for _ in range(8):
                steps.append(env.step(np.tile([0.1, 0.0], (3, 1))))
            results.append(steps)
        sync, asynchronous = results
        np.testing.assert_array_equal(sync[0], asynchronous[0])
        for a, b in zip(sync[1:], asynchronous[1:], strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
        terminated = np.array([step[2] for step in sync[1:]])
        assert terminated[:, 0].all() and terminated[2:, 1].all() and not terminated[:, 2].any()
        assert sync[-1][3].all()  # truncated at the horizon
    finally:
        for env in envs:
            env.close()
    assert all(not process.is_alive() for process in asynchronous_env.vector.processes)


def test_async_mujoco_equals_sync() -> None:
    family = native_family("ant-vel", {**ANT_FALLS, "max_episode_steps": 12})
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    actions = random_actions(family, 12, 3)
    outputs = []
    for env in (make_batch_env(family, 3, "sync"), make_batch_env(family, 3, "async")):
        try:
            outputs.append([env.reset(tasks, seed=SEED)] + [env.step(a) for a in actions])
        finally:
            env.close()
    sync, asynchronous = outputs
    np.testing.assert_array_equal(sync[0], asynchronous[0])
    for a, b in zip(sync[1:], asynchronous[1:], strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert any(step[2].any() for step in sync[1:])  # some ant fell: autoreset exercised


@pytest.mark.filterwarnings("ignore::UserWarning")  # Gymnasium reports the worker error
def test_async_closes_workers_after_a_failed_call() -> None:
    env = AsyncGymBatchEnv(Navigation2D().make_env, 2, 5)
    env.reset([NavigationTask((0.0, 0.0))] * 2, seed=0)
    with pytest.raises(Exception):  # noqa: B017  # a worker rejects the malformed actions
        env.step(np.zeros((2, 3, 3)))
    assert env.vector.closed
    assert all(not process.is_alive() for process in env.vector.processes)
    env.close()  # closing again is harmless


# ------------------------------------------------------------------------- sampler


def sample_on(family: NativeFamily, backend: str, horizon_tasks: int = 2) -> Any:
    obs_dim = family.observation_space.shape[0]
    act_dim = family.action_space.shape[0]
    policy = GaussianMLPPolicy(
        obs_dim, act_dim, (16, 16), "tanh", generator=torch.Generator().manual_seed(0)
    ).double()
    sampler = Sampler(family, policy, 2, dtype=torch.float64, backend=backend)
    tasks = family.sample_tasks(horizon_tasks, np.random.default_rng(5))
    try:
        return sampler.sample(parameters_of(policy), tasks, seed=SEED, per_task=False)
    finally:
        sampler.close()


@pytest.mark.parametrize(
    ("name", "kwargs", "backends"),
    [
        ("navigation", {"max_episode_steps": 15}, ("native", "sync", "async")),
        ("halfcheetah-vel", {"max_episode_steps": 10}, ("native", "threads", "sync", "async")),
        ("ant-vel", {**ANT_FALLS, "max_episode_steps": 25}, ("native", "threads", "sync")),
    ],
)
def test_sampler_gives_one_batch_on_every_backend(
    name: str, kwargs: dict, backends: tuple[str, ...]
) -> None:
    family = native_family(name, kwargs)
    batches = {backend: sample_on(family, backend) for backend in backends}
    reference = batches[backends[0]]
    if name == "ant-vel":
        lengths = reference.mask.sum(0)
        assert (lengths < 25).all() and len(lengths.unique()) > 1, lengths  # the ants fall
    for backend, batch in batches.items():
        for field in ("observations", "actions", "rewards", "mask"):
            assert torch.equal(getattr(batch, field), getattr(reference, field)), (backend, field)


def test_sampler_rejects_an_unknown_backend() -> None:
    family = Navigation2D()
    policy = GaussianMLPPolicy(2, 2, (4,), "tanh")
    with pytest.raises(ValueError, match="backend"):
        Sampler(family, policy, 2, backend="gpu")


def test_sampler_sets_torch_threads_while_sampling_and_restores_them() -> None:
    seen: list[int] = []

    class RecordingBatch(Navigation2DBatch):
        def step(
            self, actions: np.ndarray
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            seen.append(torch.get_num_threads())
            return super().step(actions)

    class Recording(Navigation2D):
        def make_batch_env(self, num_envs: int) -> RecordingBatch:
            return RecordingBatch(self, num_envs)

    policy = GaussianMLPPolicy(2, 2, (4,), "tanh")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for policy_threads, expected in ((1, 1), (None, 2)):
            seen.clear()
            sampler = Sampler(
                Recording(max_episode_steps=3), policy, 2, policy_threads=policy_threads
            )
            sampler.sample(parameters_of(policy), [NavigationTask((0.3, 0.3))], 0, False)
            assert seen == [expected] * 3
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


class _DiesAtStep2(Navigation2DEnv):
    """A worker env whose process exits abruptly on its third step."""

    def step(self, action: np.ndarray) -> Any:
        if self._t == 2:
            os._exit(3)
        return super().step(action)


def _dying_env() -> Navigation2DEnv:
    return _DiesAtStep2(Navigation2D())


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_dying_async_worker_is_a_clear_error_within_seconds_and_leaves_no_process() -> None:
    env = AsyncGymBatchEnv(_dying_env, 2, 10)
    env.reset([NavigationTask((0.1, 0.1))] * 2, seed=0)
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="worker process died") as error:
        for _ in range(5):
            env.step(np.zeros((2, 2)))
    assert time.monotonic() - start < 5.0
    assert "\n" not in str(error.value)
    assert all(not process.is_alive() for process in env.vector.processes)
