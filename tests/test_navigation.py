"""Tests of the 2D navigation family (envs/navigation.py) and the family registry (tasks.py)."""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from numpy.typing import ArrayLike

from maml_rl.tasks import BatchEnv, TaskFamily, TaskFamilyError, available_families, make_family
from maml_rl_envs.navigation import (
    Navigation2D,
    Navigation2DBatch,
    Navigation2DEnv,
    NavigationTask,
    navigation_step,
)


def _step(
    position: ArrayLike,
    action: ArrayLike,
    goal: ArrayLike,
    max_action: float = 0.1,
    tolerance: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return navigation_step(
        np.asarray(position, dtype=np.float64),
        np.asarray(action, dtype=np.float64),
        np.asarray(goal, dtype=np.float64),
        max_action,
        tolerance,
    )


# ----------------------------------------------------------------------------- dynamics


def test_step_hand_worked_with_clipping() -> None:
    # x is clipped from 0.3 to 0.1, y (-0.05) is inside the box
    position, reward, done = _step([[0.0, 0.0]], [[0.3, -0.05]], [[0.2, 0.1]])
    np.testing.assert_array_equal(position, [[0.1, -0.05]])
    # offset after the move (-0.1, -0.15): reward = -sqrt(0.01 + 0.0225)
    assert reward.shape == (1,)
    assert reward[0] == pytest.approx(-math.sqrt(0.0325), rel=1e-14)
    assert not done[0]


def test_step_clips_each_axis_independently() -> None:
    position, _, _ = _step([[0.2, -0.3]], [[-5.0, 5.0]], [[1.0, 1.0]])
    np.testing.assert_allclose(position, [[0.1, -0.2]], rtol=0, atol=1e-15)
    position, _, _ = _step([[0.0, 0.0]], [[0.1, -0.1]], [[1.0, 1.0]])
    np.testing.assert_allclose(position, [[0.1, -0.1]], rtol=0, atol=1e-15)
    # a wider box (family argument) clips at its own bound
    position, _, _ = _step([[0.0, 0.0]], [[0.7, -0.2]], [[1.0, 1.0]], max_action=0.5)
    np.testing.assert_allclose(position, [[0.5, -0.2]], rtol=0, atol=1e-15)


def test_reward_is_euclidean_distance_after_the_move() -> None:
    # before the move the distance is 0.1, after it 0: the reward uses the new position
    position, reward, done = _step([[0.0, 0.0]], [[0.1, 0.0]], [[0.1, 0.0]])
    np.testing.assert_array_equal(position, [[0.1, 0.0]])
    assert reward[0] == 0.0
    assert done[0]
    # 3-4-5 triangle: L2 (0.05), not L1 (0.07) or squared (0.0025)
    _, reward, _ = _step([[0.0, 0.0]], [[0.0, 0.0]], [[0.03, -0.04]])
    assert reward[0] == pytest.approx(-0.05, rel=1e-14)


def test_done_needs_both_axes_within_tolerance() -> None:
    goal = [[0.5, 0.5]] * 4
    start = [[0.5, 0.5]] * 4
    # offsets after a zero action: both small; x far; y far; both just outside
    positions = np.asarray(start) + np.array(
        [[0.009, -0.009], [0.02, 0.0], [0.0, -0.02], [0.011, 0.011]]
    )
    _, reward, done = _step(positions, np.zeros((4, 2)), goal)
    np.testing.assert_array_equal(done, [True, False, False, False])
    np.testing.assert_allclose(
        reward, -np.array([math.hypot(0.009, 0.009), 0.02, 0.02, math.hypot(0.011, 0.011)])
    )


def test_step_is_row_wise_over_a_batch() -> None:
    rng = np.random.default_rng(0)
    position = rng.uniform(-0.5, 0.5, (6, 2))
    action = rng.normal(0.0, 0.2, (6, 2))
    goal = rng.uniform(-0.5, 0.5, (6, 2))
    batch = _step(position, action, goal)
    for i in range(6):
        single = _step(position[i : i + 1], action[i : i + 1], goal[i : i + 1])
        for b, s in zip(batch, single, strict=True):
            np.testing.assert_array_equal(b[i : i + 1], s)
    expected = position + np.clip(action, -0.1, 0.1)
    np.testing.assert_array_equal(batch[0], expected)
    np.testing.assert_allclose(batch[1], -np.linalg.norm(expected - goal, axis=-1), rtol=1e-14)


# ----------------------------------------------------------------------------- tasks


def test_sample_tasks_deterministic_per_seed() -> None:
    family = Navigation2D()
    a = family.sample_tasks(10, np.random.default_rng(3))
    b = family.sample_tasks(10, np.random.default_rng(3))
    c = family.sample_tasks(10, np.random.default_rng(4))
    assert a == b
    assert len(a) == 10
    assert all(isinstance(t, NavigationTask) for t in a)
    assert all(x != y for x, y in zip(a, c, strict=True))


def test_sample_tasks_within_bounds_and_spread() -> None:
    family = Navigation2D(low=-0.2, high=0.7)
    tasks = family.sample_tasks(2000, np.random.default_rng(0))
    goals = np.array([t.goal for t in tasks])
    assert goals.shape == (2000, 2)
    assert goals.min() >= -0.2
    assert goals.max() <= 0.7
    # uniform on the square: both axes cover it and are centred on its middle
    assert goals.min(axis=0) == pytest.approx([-0.2, -0.2], abs=0.01)
    assert goals.max(axis=0) == pytest.approx([0.7, 0.7], abs=0.01)
    assert goals.mean(axis=0) == pytest.approx([0.25, 0.25], abs=0.02)
    # the two coordinates are drawn independently
    assert abs(np.corrcoef(goals.T)[0, 1]) < 0.1


def test_default_task_distribution_is_reference_square() -> None:
    family = Navigation2D()
    goals = np.array([t.goal for t in family.sample_tasks(2000, np.random.default_rng(1))])
    assert goals.min() >= -0.5
    assert goals.max() <= 0.5
    assert goals.min() == pytest.approx(-0.5, abs=0.01)
    assert goals.max() == pytest.approx(0.5, abs=0.01)
    assert family.max_episode_steps == 100
    assert family.max_action == 0.1


def test_tasks_are_frozen_hashable_and_pickle() -> None:
    (task,) = Navigation2D().sample_tasks(1, np.random.default_rng(0))
    for field in dataclasses.fields(task):  # each refuses assignment, at run time
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(task, field.name, (0.0, 0.0))
    assert all(type(v) is float for v in task.goal)
    copy = pickle.loads(pickle.dumps(task))
    assert copy == task
    assert hash(copy) == hash(task)


def test_family_pickles() -> None:
    family = Navigation2D(low=-0.3, high=0.2, max_episode_steps=9)
    copy = pickle.loads(pickle.dumps(family))
    assert (copy.low, copy.high, copy.max_episode_steps) == (-0.3, 0.2, 9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"low": 0.5, "high": 0.5},
        {"low": 1.0, "high": -1.0},
        {"max_episode_steps": 0},
        {"max_action": 0.0},
        {"max_action": -0.1},
        {"goal_tolerance": 0.0},
    ],
)
def test_bad_family_args_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError) as info:
        Navigation2D(**kwargs)
    assert "\n" not in str(info.value)
    assert any(key in str(info.value) for key in kwargs)


def test_family_satisfies_protocol() -> None:
    family = Navigation2D()
    batch_env = family.make_batch_env(3)
    assert isinstance(family, TaskFamily)
    assert isinstance(batch_env, BatchEnv)


# ----------------------------------------------------------------------------- single env


def checked_warnings(env: gym.Env) -> set[str]:
    """Gymnasium's `check_env` on `env` (errors raise): the warnings it gave, other than the
    two that the unbounded position space gives by design (the agent may walk anywhere, as in
    the paper and pytorch-maml-rl)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    unbounded = ("minimum value is -infinity", "maximum value is infinity")
    return {str(w.message) for w in caught if not any(u in str(w.message) for u in unbounded)}


def test_env_passes_gymnasium_checker() -> None:
    assert checked_warnings(Navigation2DEnv(Navigation2D())) == set()


def test_env_passes_checker_with_a_task() -> None:
    env = Navigation2D(max_episode_steps=5).make_env()
    env.reset(options={"task": NavigationTask(goal=(0.3, -0.2))})
    assert checked_warnings(env) == set()


def test_env_takes_task_through_reset_options_and_keeps_it() -> None:
    env = Navigation2D().make_env()
    task = NavigationTask(goal=(0.3, -0.2))
    obs, info = env.reset(seed=0, options={"task": task})
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    assert obs.dtype == np.float32
    assert info["task"] == task
    obs, reward, terminated, truncated, _ = env.step(np.array([0.1, -0.1], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.1, -0.1], rtol=0, atol=1e-7)
    assert reward == pytest.approx(-math.hypot(0.2, 0.1), rel=1e-6)
    assert isinstance(reward, float)
    assert terminated is False
    assert truncated is False
    # reset without options: same task, back at the origin
    obs, info = env.reset()
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    assert info["task"] == task
    _, reward_again, _, _, _ = env.step(np.array([0.1, -0.1], dtype=np.float32))
    assert reward_again == reward
    # reset with other options but no task keeps it too
    _, info = env.reset(options={"something": 1})
    assert info["task"] == task
    # a new task replaces it
    other = NavigationTask(goal=(-0.4, 0.4))
    _, info = env.reset(options={"task": other})
    assert info["task"] == other
    _, reward_other, _, _, _ = env.step(np.zeros(2, dtype=np.float32))
    assert reward_other == pytest.approx(-math.hypot(0.4, 0.4), rel=1e-12)


def test_env_truncates_at_max_episode_steps() -> None:
    env = Navigation2D(max_episode_steps=5).make_env()
    env.reset(options={"task": NavigationTask(goal=(0.45, 0.45))})
    flags = []
    for _ in range(5):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        flags.append((terminated, truncated))
    assert flags == [(False, False)] * 4 + [(False, True)]
    # a reset restarts the step counter
    env.reset()
    _, _, _, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
    assert truncated is False


def test_env_default_horizon_is_100() -> None:
    env = Navigation2D().make_env()
    env.reset(options={"task": NavigationTask(goal=(0.45, 0.45))})
    truncations = [env.step(np.zeros(2, dtype=np.float32))[3] for _ in range(100)]
    assert truncations == [False] * 99 + [True]


def test_env_terminates_on_reaching_goal() -> None:
    env = Navigation2D().make_env()
    env.reset(options={"task": NavigationTask(goal=(0.15, -0.05))})
    _, _, terminated, _, _ = env.step(np.array([0.1, -0.05]))
    assert terminated is False
    # overshoot: x goes to 0.2, 0.05 past the goal, not done
    _, _, terminated, _, _ = env.step(np.array([0.1, 0.0]))
    assert terminated is False
    env.reset()
    env.step(np.array([0.1, -0.05]))
    obs, reward, terminated, truncated, _ = env.step(np.array([0.05, 0.0]))
    np.testing.assert_allclose(obs, [0.15, -0.05], atol=1e-7)
    assert terminated is True
    assert truncated is False
    assert reward == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- batch env


def _rollout_batch(
    family: Navigation2D, tasks: list[NavigationTask], actions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    env = family.make_batch_env(len(tasks))
    obs = [env.reset(tasks, seed=0)]
    rewards, terminated, truncated = [], [], []
    for a in actions:
        o, r, te, tr = env.step(a)
        obs.append(o)
        rewards.append(r)
        terminated.append(te)
        truncated.append(tr)
    return np.array(obs), np.array(rewards), np.array(terminated), np.array(truncated)


def _rollout_singles(
    family: Navigation2D, tasks: list[NavigationTask], actions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    envs = [family.make_env() for _ in tasks]
    obs = [
        np.stack(
            [
                e.reset(seed=i, options={"task": t})[0]
                for i, (e, t) in enumerate(zip(envs, tasks, strict=True))
            ]
        )
    ]
    rewards, terminated, truncated = [], [], []
    for a in actions:
        steps = [e.step(a[i]) for i, e in enumerate(envs)]
        obs.append(np.stack([s[0] for s in steps]))
        rewards.append([s[1] for s in steps])
        terminated.append([s[2] for s in steps])
        truncated.append([s[3] for s in steps])
    return np.array(obs), np.array(rewards), np.array(terminated), np.array(truncated)


def test_batch_matches_separate_envs() -> None:
    family = Navigation2D(max_episode_steps=30)
    rng = np.random.default_rng(7)
    tasks = [*family.sample_tasks(4, rng), NavigationTask(goal=(0.05, 0.0))]
    # noisy actions, many of them outside the box; env 4 reaches its goal in the first step
    actions = rng.normal(0.0, 0.12, (30, 5, 2)).astype(np.float32)
    actions[0, 4] = (0.05, 0.0)
    batch = _rollout_batch(family, tasks, actions)
    singles = _rollout_singles(family, tasks, actions)
    names = ("observations", "rewards", "terminated", "truncated")
    for name, b, s in zip(names, batch, singles, strict=True):
        assert b.shape == s.shape, name
        np.testing.assert_array_equal(b, s, err_msg=name)
    obs, rewards, terminated, truncated = batch
    assert obs.dtype == np.float32
    assert obs.shape == (31, 5, 2)
    assert terminated[0, 4]
    assert not terminated[0, :4].any()
    np.testing.assert_array_equal(truncated[:-1], False)
    np.testing.assert_array_equal(truncated[-1], True)
    # the actions really were clipped somewhere, and the rewards match the positions
    assert (np.abs(actions) > 0.1).any()
    goals = np.array([t.goal for t in tasks])
    np.testing.assert_allclose(rewards, -np.linalg.norm(obs[1:] - goals, axis=-1), atol=1e-6)


def test_batch_reset_restarts_and_changes_tasks() -> None:
    family = Navigation2D(max_episode_steps=3)
    env = family.make_batch_env(2)
    tasks = [NavigationTask(goal=(0.2, 0.0)), NavigationTask(goal=(0.0, -0.3))]
    env.reset(tasks)
    for _ in range(3):
        _, _, _, truncated = env.step(np.zeros((2, 2)))
    assert truncated.all()
    obs = env.reset(tasks[::-1])
    np.testing.assert_array_equal(obs, np.zeros((2, 2)))
    _, reward, _, truncated = env.step(np.zeros((2, 2)))
    assert not truncated.any()
    np.testing.assert_allclose(reward, [-0.3, -0.2], rtol=1e-14)


def test_batch_reset_needs_one_task_per_env() -> None:
    env = Navigation2D().make_batch_env(3)
    assert isinstance(env, Navigation2DBatch)
    with pytest.raises(ValueError, match="3"):
        env.reset([NavigationTask(goal=(0.0, 0.0))] * 2)


# ----------------------------------------------------------------------------- registry


def test_navigation_is_registered() -> None:
    assert available_families()["navigation"] == "maml_rl_envs.navigation:Navigation2D"


def test_make_family_by_name_with_kwargs() -> None:
    family = make_family("navigation", {"low": -0.2, "high": 0.3, "max_episode_steps": 7})
    assert isinstance(family, Navigation2D)
    assert (family.low, family.high, family.max_episode_steps) == (-0.2, 0.3, 7)
    goals = np.array([t.goal for t in family.sample_tasks(200, np.random.default_rng(0))])
    assert goals.min() >= -0.2
    assert goals.max() <= 0.3


def test_make_family_defaults() -> None:
    kwargs: dict[str, Any] | None
    for kwargs in (None, {}):
        family = make_family("navigation", kwargs)
        assert isinstance(family, Navigation2D)
        assert (family.low, family.high, family.max_episode_steps) == (-0.5, 0.5, 100)


def test_make_family_by_import_path() -> None:
    family = make_family("maml_rl_envs.navigation:Navigation2D", {"max_episode_steps": 11})
    assert isinstance(family, Navigation2D)
    assert family.max_episode_steps == 11
    assert isinstance(family.make_env(), gym.Env)


def test_unknown_family_lists_registered() -> None:
    with pytest.raises(TaskFamilyError) as info:
        make_family("navigatoin")
    message = str(info.value)
    assert "\n" not in message
    assert "'navigatoin'" in message
    assert "navigation" in message.split("registered")[-1]


@pytest.mark.parametrize(
    "path",
    [
        "no_such_module_for_maml_rl_tests:Family",
        "maml_rl_envs.no_such_module:Family",
        "maml_rl_envs.navigation:NoSuchFamily",
        "maml_rl_envs.navigation:",
        ":Navigation2D",
    ],
)
def test_bad_import_path_raises_one_line(path: str) -> None:
    with pytest.raises(TaskFamilyError) as info:
        make_family(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lowx": -1.0},
        {"low": 1.0, "high": 0.0},
        {"max_episode_steps": 0},
        {"max_action": -0.1},
    ],
)
def test_bad_env_kwargs_raise_task_family_error(kwargs: dict) -> None:
    with pytest.raises(TaskFamilyError) as info:
        make_family("navigation", kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert "navigation" in message
    assert any(key in message for key in kwargs)


def test_object_without_family_methods_is_rejected() -> None:
    with pytest.raises(TaskFamilyError, match="sample_tasks") as info:
        make_family("builtins:object")
    assert "\n" not in str(info.value)
