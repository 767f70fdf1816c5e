"""Meta-World ML1 / ML10 families (the optional `metaworld` extra; skipped without it)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

pytest.importorskip("metaworld")

import mujoco

from maml_rl.checker import check_family
from maml_rl.cli import main
from maml_rl.config import Config
from maml_rl.evaluate import held_out
from maml_rl.tasks import make_family
from maml_rl.vector import GymBatchEnv
from maml_rl_envs.meta_world import (
    MetaWorldEnv,
    MetaWorldML1,
    MetaWorldML10,
    MetaWorldML45,
    MetaWorldTask,
    apply_mujoco_compat,
    balanced_counts,
    expert_policy,
    goal_of,
    needs_weld_fix,
)


@pytest.fixture(scope="module")
def reach() -> MetaWorldML1:  # building the benchmark takes about a second
    family = make_family("metaworld-ml1", {"env_name": "reach-v3", "max_episode_steps": 150})
    assert isinstance(family, MetaWorldML1)
    return family


def _goal(family: MetaWorldML1, task: MetaWorldTask) -> tuple[float, ...]:
    return tuple(pickle.loads(family.benchmark_task(task).data)["rand_vec"].round(12))


def test_ml1_splits_are_disjoint_and_complete(reach: MetaWorldML1) -> None:
    train, test = reach.all_tasks("train"), reach.all_tasks("test")
    assert len(train) == len(test) == 50
    assert {_goal(reach, t) for t in train}.isdisjoint({_goal(reach, t) for t in test})
    drawn = reach.sample_tasks(2000, np.random.default_rng(0))
    assert {t.split for t in drawn} == {"train"} and {t.index for t in drawn} == set(range(50))
    held = reach.sample_test_tasks(2000, np.random.default_rng(0))
    assert {t.split for t in held} == {"test"} and {t.index for t in held} == set(range(50))


def test_ml10_trains_on_ten_environments_and_holds_five_others_out() -> None:
    family = cast(MetaWorldML10, make_family("metaworld-ml10", {"max_episode_steps": 20}))
    train_names, test_names = set(family.env_names("train")), set(family.env_names("test"))
    assert len(train_names) == 10 and len(test_names) == 5
    assert train_names.isdisjoint(test_names)
    drawn = family.sample_tasks(500, np.random.default_rng(1))
    assert {t.env_name for t in drawn} == train_names
    assert {t.env_name for t in family.sample_test_tasks(300, np.random.default_rng(1))} == (
        test_names
    )
    assert len(family.all_tasks("train")) == 500 and len(family.all_tasks("test")) == 250


def test_balanced_counts_spread_n_tasks_evenly() -> None:
    rng = np.random.default_rng(0)
    for n in range(0, 60):
        for classes in (1, 5, 10, 45):
            counts = balanced_counts(n, classes, rng)
            assert sum(counts) == n and max(counts) - min(counts) <= (1 if n % classes else 0)
    # the environments that get one more vary from call to call
    extra = {tuple(balanced_counts(23, 10, rng)) for _ in range(20)}
    assert len(extra) > 1


def test_balanced_sampling_spreads_tasks_over_the_environments() -> None:
    """balanced: ML10's 20 training tasks are 2 per environment, grouped in name order, each
    environment's goals distinct; 25 held-out tasks 5 per environment; the i.i.d. default is
    not balanced; a non-boolean is refused."""
    family = cast(
        MetaWorldML10, make_family("metaworld-ml10", {"max_episode_steps": 20, "balanced": True})
    )
    assert repr(family) == "MetaWorldML10(H=20, balanced)"
    tasks = family.sample_tasks(20, np.random.default_rng(3))
    names = [t.env_name for t in tasks]
    assert names == [name for name in sorted(family.env_names("train")) for _ in range(2)]
    assert len(set(tasks)) == 20  # goals without replacement within an environment
    few = family.sample_tasks(3, np.random.default_rng(3))  # fewer tasks than environments
    assert len({t.env_name for t in few}) == 3
    again = family.sample_tasks(20, np.random.default_rng(3))
    assert again == tasks  # a function of the generator
    assert family.sample_tasks(20, np.random.default_rng(4)) != tasks  # other goals
    held_out = family.sample_test_tasks(25, np.random.default_rng(3))
    counts = {name: sum(t.env_name == name for t in held_out) for name in family.env_names("test")}
    assert set(counts.values()) == {5}
    many = family.sample_tasks(600, np.random.default_rng(0))  # 60 a class: goals reused after 50
    for name in family.env_names("train"):
        own = [t for t in many if t.env_name == name]
        assert len(own) == 60 and len(set(own[:50])) == 50 and len(set(own)) == 50
    iid = make_family("metaworld-ml10", {"max_episode_steps": 20}).sample_tasks(
        20, np.random.default_rng(3)
    )
    assert [t.env_name for t in iid] != names
    with pytest.raises(ValueError, match="balanced must be true or false"):
        make_family("metaworld-ml10", {"balanced": "yes"})


def test_an_environment_holds_one_sawyer_environment_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task of another environment name closes the Sawyer environment of the one before:
    otherwise each of a sampler's N·K environments keeps one of about 20 MiB for every name it
    visits (ML45: up to 50). Rebuilt, an environment gives what a fresh one gives."""
    family = cast(MetaWorldML10, make_family("metaworld-ml10", {"max_episode_steps": 20}))
    by_name: dict[str, MetaWorldTask] = {}
    for task in family.all_tasks("train"):
        by_name.setdefault(task.env_name, task)
    a, b, c = (by_name[name] for name in sorted(by_name)[:3])
    a2 = next(t for t in family.all_tasks("train") if t.env_name == a.env_name and t != a)
    built: list[object] = []
    closed: list[object] = []
    real = family.env_class

    def tracked(name: str) -> type:
        cls: Any = real(name)  # a Sawyer class, chosen at run time

        class Tracked(cls):
            def __init__(self) -> None:
                super().__init__()
                built.append(self)

            def close(self) -> None:
                closed.append(self)
                super().close()

        return Tracked

    monkeypatch.setattr(family, "env_class", tracked)
    env = family.make_env()
    first, _ = env.reset(seed=3, options={"task": a})
    for task in (b, a, c, c):
        env.reset(seed=4, options={"task": task})
        env.step(np.zeros(4))
    assert len(built) == 4 and closed == built[:3]  # a, b, a, c; c again reuses its own
    env.reset(seed=4, options={"task": a2})
    assert len(built) == 5 and closed == built[:4]
    again, _ = env.reset(seed=3, options={"task": a})  # a's goal back, in a new Sawyer env
    np.testing.assert_array_equal(again, first)
    env.close()
    assert closed == built


def test_ml45_trains_on_45_environments_and_holds_5_others_out() -> None:
    family = cast(MetaWorldML45, make_family("metaworld-ml45", {"max_episode_steps": 20}))
    train_names, test_names = set(family.env_names("train")), set(family.env_names("test"))
    assert len(train_names) == 45 and len(test_names) == 5
    assert train_names.isdisjoint(test_names)
    assert test_names == {f"{n}-v3" for n in ("bin-picking", "box-close", "hand-insert",
                                              "door-lock", "door-unlock")}  # fmt: skip
    drawn = family.sample_tasks(2000, np.random.default_rng(1))
    assert {t.env_name for t in drawn} == train_names
    held = family.sample_test_tasks(300, np.random.default_rng(1))
    assert {t.env_name for t in held} == test_names
    assert len(family.all_tasks("train")) == 45 * 50 and len(family.all_tasks("test")) == 250
    again = cast(MetaWorldML45, make_family("metaworld-ml45"))
    assert again.benchmark is family.benchmark  # built once


def test_evaluation_draws_the_held_out_split() -> None:
    cfg = Config(env="metaworld-ml1", env_kwargs={"env_name": "reach-v3"})
    tasks = held_out(cfg, num_tasks=10, num_steps=1, eval_seed=0).tasks
    assert {t.split for t in tasks} == {"test"}


def test_the_weld_fix_is_applied_exactly_when_mujoco_needs_it() -> None:
    assert not needs_weld_fix(11) and needs_weld_fix(12)
    assert apply_mujoco_compat() == needs_weld_fix(int(mujoco.mjNEQDATA))


def test_bad_arguments_are_one_line_errors() -> None:
    from maml_rl.tasks import TaskFamilyError

    with pytest.raises(TaskFamilyError, match="not a Meta-World v3 environment"):
        make_family("metaworld-ml1", {"env_name": "reach-v9"})
    with pytest.raises(
        TaskFamilyError, match=r"max_episode_steps must be an integer in \[1, 500\]"
    ):
        make_family("metaworld-ml1", {"max_episode_steps": 501})


def test_the_family_passes_the_checker_and_pickles(reach: MetaWorldML1) -> None:
    check_family(reach, seed=0)
    copy = pickle.loads(pickle.dumps(reach))
    assert copy.all_tasks("test") == reach.all_tasks("test")


# Meta-World's scripted reach expert warns about its own gains (its actions are clipped to
# [-1, 1], as the environment's are); the test is about our family, not that policy
@pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high:UserWarning")
def test_reach_experts_succeed_through_the_family_environment(reach: MetaWorldML1) -> None:
    """Meta-World's scripted reach policy (given the hidden goal) succeeds on held-out tasks
    run through our environment, and the batch env reports it: the task reaches the simulator."""
    expert = expert_policy("reach-v3")
    tasks = reach.sample_test_tasks(3, np.random.default_rng(0))
    batch = GymBatchEnv(reach.make_env, 3, reach.max_episode_steps)
    envs = [env for env in batch.envs if isinstance(env, MetaWorldEnv)]
    assert len(envs) == 3
    obs = batch.reset(tasks, seed=0)
    succeeded = np.zeros(3, dtype=bool)
    for _ in range(reach.max_episode_steps):
        actions = []
        for i, env in enumerate(envs):
            seen = obs[i].copy()
            seen[36:39] = goal_of(env)  # ML hides the goal; the expert needs it
            actions.append(expert.get_action(seen))
        obs, _, _, truncated = batch.step(np.stack(actions))
        succeeded |= batch.success
        if truncated.all():
            break
    assert succeeded.all()
    # a different goal (another task) moves the target the expert is sent to
    assert len({tuple(goal_of(env).round(6)) for env in envs}) == 3
    batch.close()


def test_worker_processes_sample_what_this_process_samples(reach: MetaWorldML1) -> None:
    """The procs backend (auto's choice here) unpickles the family in fresh processes: the
    MuJoCo fix must be in place there too, and the batch is the in-process one."""
    import torch

    from maml_rl.policy import build_policy, parameters_of
    from maml_rl.sampler import Sampler

    family = cast(
        MetaWorldML1,
        make_family("metaworld-ml1", {"env_name": "reach-v3", "max_episode_steps": 5}),
    )
    policy = build_policy(
        family.observation_space, family.action_space, (8,), "tanh", 1.0,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    tasks = family.sample_tasks(2, np.random.default_rng(0))
    batches = []
    for backend in ("sync", "auto"):
        sampler = Sampler(family, policy, trajectories_per_task=2, backend=backend)
        try:
            batches.append(sampler.sample(parameters_of(policy), tasks, seed=3, per_task=False))
        finally:
            sampler.close()
    for name in ("observations", "actions", "rewards", "mask", "success"):
        assert torch.equal(getattr(batches[0], name), getattr(batches[1], name)), name


def test_a_tiny_training_iteration_and_evaluation_from_the_cli(tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [
        "num_batches=1", "meta_batch_size=2", "fast_batch_size=2", "hidden_sizes=[8, 8]",
        "env_kwargs={max_episode_steps: 10}", "sampler=sync",
    ]  # fmt: skip
    args = ["train", "metaworld-ml1-reach", "--out", str(run), "--no-progress", "--set"]
    assert main(args + overrides) == 0
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"success/pre_update", "success/post_update"} <= set(row)
    assert 0.0 <= row["success/post_update"] <= 1.0
    evaluate = ["evaluate", str(run), "--num-tasks", "2", "--num-steps", "1", "--no-progress"]
    assert main(evaluate) == 0
    assert (run / "eval" / "success_tasks.csv").is_file()
    # watching it adapt: the held-out tasks replayed and filmed from above the table
    gif = tmp_path / "adapt.gif"
    render = ["render", str(run), "--steps", "0,1", "--eval-tasks", "2", "--out", str(gif)]
    assert main(render) == 0
    from PIL import Image

    with Image.open(gif) as video:
        assert video.size == (640, 240) and video.n_frames == 11  # 10 steps + the last state


def test_ml45_smoke_trains_one_iteration(tmp_path: Path) -> None:
    """The shipped ML45 config at tiny sizes: tasks of the 45 training environments, one
    meta-update, success logged."""
    run = tmp_path / "ml45"
    overrides = [
        "num_batches=1", "meta_batch_size=3", "fast_batch_size=2", "hidden_sizes=[8]",
        "env_kwargs={max_episode_steps: 10}", "sampler=sync",
    ]  # fmt: skip
    assert main(["train", "metaworld-ml45", "--out", str(run), "--no-progress", "--set",
                 *overrides]) == 0  # fmt: skip
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["meta/accepted"] in (0.0, 1.0) and 0.0 <= row["success/post_update"] <= 1.0
