"""Every registered task family: the checker passes, rewards equal REFERENCE's closed forms,
episodes are deterministic per seed, tasks come from the documented distribution.

Families are parametrised from the registry, so a new built-in family is covered at once; it
must add its closed form to CLOSED_FORMS and its distribution to TASK_RANGES (the tests say so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
from conftest import usable_families
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from maml_rl.checker import check_family
from maml_rl.tasks import TaskFamily, TaskFamilyError, available_families, make_family
from maml_rl.vector import make_batch_env
from maml_rl_envs.ant import AntVel
from maml_rl_envs.halfcheetah import HalfCheetahVel
from maml_rl_envs.mujoco_base import MujocoFamily

FAMILIES = usable_families()  # the registry, less families of extras not installed
BUILT_IN = {
    name for name, target in available_families().items() if target.startswith("maml_rl_envs.")
}
MUJOCO = [name for name in FAMILIES if name.startswith(("halfcheetah-", "ant-"))]


def require_built_in(name: str, table: dict[str, Any], table_name: str) -> Any:
    if name not in table:
        if name in BUILT_IN:
            pytest.fail(f"built-in family '{name}' needs an entry in {table_name}")
        pytest.skip(f"'{name}' is a plug-in family; its closed form is not known here")
    return table[name]


# --------------------------------------------------------------- closed forms (REFERENCE.md)

Step = dict[str, Any]  # task, policy action, obs after the step, info, unwrapped env


def env_action(step: Step) -> np.ndarray:
    """What the robot received: the policy output / 10, clipped to the actuator range."""
    return np.clip(np.asarray(step["action"], np.float64) / 10.0, -1.0, 1.0)


def ant_costs(step: Step) -> float:
    """-0.005‖a‖² - 0.0005‖clip(cfrc_ext, -1, 1)‖² + 0.05 while the torso height is in [0.2, 1]."""
    data = step["unwrapped"].data
    contact = np.clip(data.cfrc_ext, -1.0, 1.0)
    healthy = 0.2 <= data.qpos[2] <= 1.0
    return -0.005 * np.sum(env_action(step) ** 2) - 0.0005 * np.sum(contact**2) + 0.05 * healthy


def x_velocity(step: Step) -> float:
    return float(step["info"]["x_velocity"])


CLOSED_FORMS: dict[str, Callable[[Step], float]] = {
    "navigation": lambda s: -float(np.linalg.norm(s["obs"] - np.asarray(s["task"].goal))),
    "halfcheetah-vel": lambda s: (
        -abs(x_velocity(s) - s["task"].velocity) - 0.05 * np.sum(env_action(s) ** 2)
    ),
    "halfcheetah-dir": lambda s: (
        s["task"].direction * x_velocity(s) - 0.05 * np.sum(env_action(s) ** 2)
    ),
    "ant-vel": lambda s: -abs(x_velocity(s) - s["task"].velocity) + 1.0 + ant_costs(s),
    "ant-dir": lambda s: s["task"].direction * x_velocity(s) + ant_costs(s),
    "ant-goal": lambda s: (
        -float(np.abs(s["unwrapped"].data.qpos[:2] - np.asarray(s["task"].goal)).sum())
        + 4.0
        + ant_costs(s)
    ),
    # Meta-World's own v3 reward of the step, unchanged: its `evaluate_state` of the returned
    # observation and the action, on the task's Sawyer environment
    "metaworld-ml1": lambda s: metaworld_reward(s),
    "metaworld-ml10": lambda s: metaworld_reward(s),
    "metaworld-ml45": lambda s: metaworld_reward(s),
}


def metaworld_reward(step: Step) -> float:
    sawyer = step["unwrapped"]._env
    return float(sawyer.evaluate_state(step["obs"], step["action"])[0])


@pytest.mark.parametrize("name", FAMILIES)
def test_checker_passes(name: str) -> None:
    check_family(make_family(name), seed=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_reward_equals_closed_form(name: str) -> None:
    closed_form = require_built_in(name, CLOSED_FORMS, "CLOSED_FORMS")
    family = make_family(name)
    # std 10 in policy space: about a third of the robot's actions hit the clip at ±1
    for task in family.sample_tasks(3, np.random.default_rng(1)):
        env = family.make_env()
        env.reset(seed=2, options={"task": task})
        rng = np.random.default_rng(3)
        saw_contact = False
        for _ in range(25):
            action = rng.normal(0.0, 10.0, env.action_space.shape).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            step = {"task": task, "action": action, "obs": obs, "info": info}
            step["unwrapped"] = env.unwrapped
            assert reward == pytest.approx(closed_form(step), rel=1e-6, abs=1e-6)
            saw_contact |= float(info.get("reward_contact", 0.0)) != 0.0
            if terminated or truncated:
                break
        if name.startswith("ant-"):
            assert saw_contact, "the contact cost was never exercised"
        env.close()


def test_closed_forms_are_not_vacuous() -> None:
    """The closed forms distinguish tasks and the action cost (a wrong weight would show)."""
    family = cast(HalfCheetahVel, make_family("halfcheetah-vel"))
    env = family.make_env()
    task_a, task_b = family.sample_tasks(2, np.random.default_rng(0))
    env.reset(seed=0, options={"task": task_a})
    action = np.full(family.action_space.shape, 5.0, np.float32)  # robot gets 0.5 per joint
    obs, reward, _, _, info = env.step(action)
    step = {"task": task_a, "action": action, "obs": obs, "info": info, "unwrapped": env.unwrapped}
    assert reward == pytest.approx(CLOSED_FORMS["halfcheetah-vel"](step))
    assert float(info["reward_ctrl"]) == pytest.approx(-0.05 * 6 * 0.25)
    assert reward != pytest.approx(CLOSED_FORMS["halfcheetah-vel"](step | {"task": task_b}))


# --------------------------------------------------------------------------- determinism


def rollout(family: TaskFamily, task: Any, seed: int, num_steps: int = 15) -> tuple[list, list]:
    env = family.make_env()
    obs, _ = env.reset(seed=seed, options={"task": task})
    env.action_space.seed(seed)
    observations, rewards = [np.array(obs)], []
    for _ in range(num_steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(np.array(obs))
        rewards.append(float(reward))
        if terminated or truncated:
            break
    env.close()
    return observations, rewards


@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_same_tasks_and_trajectories(name: str) -> None:
    family = make_family(name)
    tasks = family.sample_tasks(5, np.random.default_rng(7))
    assert tasks == family.sample_tasks(5, np.random.default_rng(7))
    assert tasks != family.sample_tasks(5, np.random.default_rng(8))
    first, second = rollout(family, tasks[0], seed=11), rollout(family, tasks[0], seed=11)
    assert len(first[0]) == len(second[0]) > 1
    for a, b in zip(first[0], second[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[1] == second[1]


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_env_reset_is_deterministic_per_seed(name: str) -> None:
    family = make_family(name)
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    batch = make_batch_env(family, 3)
    first = batch.reset(tasks, seed=5)
    np.testing.assert_array_equal(first, batch.reset(tasks, seed=5))
    batch.close()


@pytest.mark.parametrize("name", MUJOCO)
def test_mujoco_reset_noise_follows_the_seed(name: str) -> None:
    family = make_family(name)
    task = family.sample_tasks(1, np.random.default_rng(0))[0]
    first, other = rollout(family, task, seed=1, num_steps=1), rollout(family, task, seed=2)
    assert not np.array_equal(first[0][0], other[0][0])


# ---------------------------------------------------------------------- task distributions


def check_navigation(tasks: list, _: TaskFamily) -> None:
    goals = np.array([t.goal for t in tasks])
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert goals.min() < -0.45 and goals.max() > 0.45


def check_velocity(low: float, high: float) -> Callable[[list, TaskFamily], None]:
    def check(tasks: list, _: TaskFamily) -> None:
        v = np.array([t.velocity for t in tasks])
        assert v.min() >= low and v.max() <= high
        assert v.min() < low + 0.05 * (high - low) and v.max() > high - 0.05 * (high - low)
        assert abs(v.mean() - (low + high) / 2) < 0.05 * (high - low)

    return check


def check_direction(tasks: list, _: TaskFamily) -> None:
    d = np.array([t.direction for t in tasks])
    assert set(d.tolist()) == {-1, 1}
    assert all(isinstance(t.direction, int) for t in tasks)
    assert abs((d == 1).mean() - 0.5) < 0.05


def check_goal_square(tasks: list, _: TaskFamily) -> None:
    goals = np.array([t.goal for t in tasks])
    assert goals.min() >= -3.0 and goals.max() <= 3.0
    # corners are reachable in a square, not in a disc of radius 3
    assert (np.abs(goals) > 2.5).all(axis=1).any()


def check_metaworld(tasks: list, family: TaskFamily) -> None:
    """Training tasks come from the benchmark's train split only, each environment about
    equally often, and about as many distinct tasks are drawn as uniform draws cover:
    n draws of M equally likely tasks cover M (1 − (1 − 1/M)^n) in expectation (2000 draws:
    ML1's 50 all, ML10's 500 but about 9, ML45's 2250 about 59 %)."""
    assert {t.split for t in tasks} == {"train"}
    names = family.env_names("train")  # type: ignore[attr-defined]
    counts = np.array([sum(t.env_name == n for t in tasks) for n in names])
    assert (np.abs(counts / len(tasks) - 1 / len(names)) < 0.05).all()
    every = {(t.env_name, t.index) for t in family.all_tasks("train")}  # type: ignore[attr-defined]
    drawn = {(t.env_name, t.index) for t in tasks}
    covered = len(every) * (1 - (1 - 1 / len(every)) ** len(tasks))
    assert drawn <= every and abs(len(drawn) - covered) < 0.05 * covered


TASK_RANGES: dict[str, Callable[[list, TaskFamily], None]] = {
    "metaworld-ml1": check_metaworld,
    "metaworld-ml10": check_metaworld,
    "metaworld-ml45": check_metaworld,
    "navigation": check_navigation,
    "halfcheetah-vel": check_velocity(0.0, 2.0),
    "halfcheetah-dir": check_direction,
    "ant-vel": check_velocity(0.0, 3.0),
    "ant-dir": check_direction,
    "ant-goal": check_goal_square,
}


@pytest.mark.parametrize("name", FAMILIES)
def test_task_distribution(name: str) -> None:
    check = require_built_in(name, TASK_RANGES, "TASK_RANGES")
    family = make_family(name)
    check(family.sample_tasks(2000, np.random.default_rng(0)), family)


def test_task_ranges_follow_env_kwargs() -> None:
    promp = make_family("halfcheetah-vel", {"high": 3.0})
    check_velocity(0.0, 3.0)(promp.sample_tasks(2000, np.random.default_rng(0)), promp)
    disc = make_family("ant-goal", {"goal_radius": 3.0})
    goals = np.array([t.goal for t in disc.sample_tasks(2000, np.random.default_rng(0))])
    radius = np.linalg.norm(goals, axis=1)
    assert radius.max() <= 3.0 and radius.max() > 2.9
    # uniform in area: half the goals lie within radius 3/sqrt(2)
    assert abs((radius < 3.0 / np.sqrt(2.0)).mean() - 0.5) < 0.05


NO_ORACLE = {
    "metaworld-ml10": "its held-out environments are never trained on",
    "metaworld-ml45": "its held-out environments are never trained on",
}


@pytest.mark.parametrize("name", FAMILIES)
def test_oracle_features_are_the_task_parameters(name: str) -> None:
    family = make_family(name)
    if name in NO_ORACLE:
        assert not hasattr(family, "oracle_features")
        return
    assert hasattr(family, "oracle_features")
    task_a, task_b = family.sample_tasks(2, np.random.default_rng(3))
    features = family.oracle_features(task_a)
    assert features.ndim == 1 and np.isfinite(features).all()
    assert not np.array_equal(features, family.oracle_features(task_b)) or task_a == task_b


# ------------------------------------------------------------------- MuJoCo family details


@pytest.mark.parametrize(
    ("name", "kwargs", "obs_dim", "act_dim"),
    [
        ("halfcheetah-vel", {}, 17, 6),
        ("halfcheetah-dir", {}, 17, 6),
        ("ant-vel", {}, 105, 8),
        ("ant-dir", {"include_contact_forces": False}, 27, 8),
        ("ant-goal", {}, 107, 8),
    ],
)
def test_spaces(name: str, kwargs: dict, obs_dim: int, act_dim: int) -> None:
    family = cast(MujocoFamily, make_family(name, kwargs))
    env = family.make_env()
    assert family.observation_space.shape == env.observation_space.shape == (obs_dim,)
    assert env.action_space == family.action_space
    np.testing.assert_array_equal(family.action_space.low, -10.0)
    np.testing.assert_array_equal(family.action_space.high, 10.0)
    assert family.action_space.shape == (act_dim,)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (obs_dim,)
    env.close()


def test_ant_goal_observes_its_position() -> None:
    family = make_family("ant-goal")
    env = family.make_env()
    env.reset(seed=0)
    obs, _, _, _, info = env.step(np.zeros(8, np.float32))
    assert obs[:2] == pytest.approx([info["x_position"], info["y_position"]])
    env.close()


@pytest.mark.parametrize("name", [n for n in MUJOCO if n.startswith("ant-")])
@pytest.mark.parametrize(
    ("height", "healthy_z_range", "ends"),
    [(1.3, (0.2, 1.0), True), (0.6, (0.2, 1.0), False), (0.6, (0.7, 1.0), True)],
)
def test_ant_terminates_on_an_unhealthy_torso(
    name: str, height: float, healthy_z_range: tuple[float, float], ends: bool
) -> None:
    env = make_family(name, {"healthy_z_range": healthy_z_range}).make_env()
    env.reset(seed=0)
    ant = env.unwrapped
    assert isinstance(ant, MujocoEnv)
    data = ant.data
    qpos = data.qpos.copy()
    qpos[2] = height
    ant.set_state(qpos, np.zeros_like(data.qvel))
    _, _, terminated, truncated, info = env.step(np.zeros(8, np.float32))
    assert bool(terminated) is ends and not truncated
    assert info["reward_survive"] == (0.0 if ends else 0.05)
    env.close()


@pytest.mark.parametrize("name", MUJOCO)
def test_truncation_at_max_episode_steps_and_task_kept(name: str) -> None:
    family = make_family(name, {"max_episode_steps": 6})
    env = family.make_env()
    task = family.sample_tasks(1, np.random.default_rng(4))[0]
    _, info = env.reset(seed=0, options={"task": task})
    assert info["task"] == task
    flags = []
    for _ in range(6):
        _, _, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, np.float32))
        flags.append((terminated, truncated))
    assert flags == [(False, False)] * 5 + [(False, True)]
    _, info = env.reset()
    assert info["task"] == task
    env.close()


def test_paper_protocol_is_reachable() -> None:
    cheetah = cast(
        HalfCheetahVel,
        make_family(
            "halfcheetah-vel", {"max_episode_steps": 200, "frame_skip": 1, "action_scale": 1.0}
        ),
    )
    assert cheetah.max_episode_steps == 200 and cheetah.dt == pytest.approx(0.01)
    np.testing.assert_array_equal(cheetah.action_space.high, 1.0)
    ant = cast(AntVel, make_family("ant-vel", {"max_episode_steps": 200, "frame_skip": 2}))
    assert ant.dt == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("halfcheetah-vel", {"low": 2.0, "high": 1.0}, "low <= high"),
        ("ant-goal", {"goal_radius": -1.0}, "goal_radius"),
        ("ant-dir", {"action_scale": 0.0}, "action_scale"),
        ("halfcheetah-dir", {"max_episode_steps": 0}, "max_episode_steps"),
        (
            "ant-vel",
            {"velocity": 1.0},
            "^bad env_kwargs .*: got an unexpected keyword .*'velocity'",
        ),
        (
            "halfcheetah-dir",
            {"bogus": 1},
            "^bad env_kwargs .*: got an unexpected keyword .*'bogus'",
        ),
        ("ant-goal", {"healthy_z_range": (1.0, 0.2)}, "healthy_z_range"),
    ],
)
def test_bad_env_kwargs_are_one_line_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(TaskFamilyError, match=match) as error:
        make_family(name, kwargs)
    assert "\n" not in str(error.value)


def test_repr_describes_the_distribution() -> None:
    assert "U[0, 2]" in repr(make_family("halfcheetah-vel"))
    assert "disc of radius 3" in repr(make_family("ant-goal", {"goal_radius": 3.0}))
    assert "H=200" in repr(make_family("ant-dir", {"max_episode_steps": 200}))


def test_policy_action_is_scaled_and_clipped() -> None:
    """The robot receives clip(action / action_scale, -1, 1): compare two envs stepped alike."""
    tenfold = make_family("halfcheetah-dir").make_env()
    unit = make_family("halfcheetah-dir", {"action_scale": 1.0}).make_env()
    assert isinstance(unit.action_space, gym.spaces.Box)
    action = np.array([3.0, -30.0, 0.5, 10.0, -2.0, 0.0], np.float32)
    tenfold.reset(seed=0)
    unit.reset(seed=0)
    obs_tenfold, reward_tenfold, *_ = tenfold.step(action)
    obs_unit, reward_unit, *_ = unit.step(np.clip(action / 10.0, -1.0, 1.0))
    np.testing.assert_array_equal(obs_tenfold, obs_unit)
    assert reward_tenfold == reward_unit


def test_envs_names_the_install_command_of_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`maml-rl envs` without Meta-World: its families are listed with a command that works for
    an installed package too, not only in a checkout."""
    import sys

    from maml_rl.cli import main

    monkeypatch.setitem(sys.modules, "metaworld", None)  # `import metaworld` fails
    assert main(["envs"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "metaworld-ml1 " in line]
    assert len(lines) == 1 and 'pip install "maml-rl[metaworld]"' in lines[0]
