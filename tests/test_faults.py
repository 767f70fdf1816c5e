"""Faults during a run: non-finite data, rejected TRPO steps, killed or corrupt checkpoints."""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_batch, make_policy
from process_env_helpers import GymOnly

from maml_rl import checkpoint
from maml_rl.checkpoint import CheckpointError
from maml_rl.cli import main
from maml_rl.config import Config
from maml_rl.logger import read_metrics
from maml_rl.maml import NonFiniteError, TaskData, check_finite, meta_step
from maml_rl.train import LATEST, RunStopped, train
from maml_rl.types import Batch
from maml_rl_envs.navigation import Navigation2D, Navigation2DBatch, NavigationTask


class Tiny(TypedDict):
    """Config fields of a tiny run (typed, so that Config(**TINY) checks against them)."""

    meta_batch_size: int
    fast_batch_size: int
    hidden_sizes: tuple[int, ...]
    cg_iters: int
    env_kwargs: dict[str, Any]


TINY: Tiny = {
    "meta_batch_size": 2,
    "fast_batch_size": 2,
    "hidden_sizes": (8,),
    "cg_iters": 2,
    "env_kwargs": {"max_episode_steps": 8},
}


class _NaNBatch(Navigation2DBatch):
    """Navigation whose env 1 returns a NaN reward at step 3 on the resets listed in `bad`."""

    def __init__(self, family: Navigation2D, num_envs: int, bad: set[int]) -> None:
        super().__init__(family, num_envs)
        self.bad, self.resets = bad, 0

    def reset(self, tasks: Sequence[NavigationTask], seed: int | None = None) -> np.ndarray:
        self.resets += 1
        return super().reset(tasks, seed)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        obs, reward, terminated, truncated = super().step(actions)
        if self.resets in self.bad and self._t == 4:
            reward = reward.copy()
            reward[1] = np.nan
        return obs, reward, terminated, truncated


class NaNOnFirstSample(Navigation2D):
    """Only the first sampling call of the run (iteration 0, pre-update) is poisoned."""

    def make_batch_env(self, num_envs: int) -> _NaNBatch:
        return _NaNBatch(self, num_envs, bad={1})


class NaNFromIteration2(Navigation2D):
    """Every sampling call from iteration 2 on (2 calls per iteration) is poisoned."""

    def make_batch_env(self, num_envs: int) -> _NaNBatch:
        return _NaNBatch(self, num_envs, bad=set(range(5, 1000)))


class NaNAlways(Navigation2D):
    """Every sampling call is poisoned: no iteration can complete."""

    def make_batch_env(self, num_envs: int) -> _NaNBatch:
        return _NaNBatch(self, num_envs, bad=set(range(1000)))


def config(env: str, **kw: Any) -> Config:
    return Config(env=f"test_faults:{env}", **TINY, **kw)


def test_check_finite_names_task_trajectory_and_step() -> None:
    batch, _ = make_batch(0, horizon=5)
    rewards = batch.rewards.clone()
    mask = torch.ones_like(batch.mask)
    rewards[3, 2, 1] = float("inf")
    poisoned = Batch(batch.observations, batch.actions, rewards, mask)
    with pytest.raises(
        NonFiniteError, match=r"non-finite reward from task 2 \(c\), trajectory 1, step 3"
    ):
        check_finite(poisoned, ["a", "b", "c"], "post-update")
    # garbage after an episode ended is ignored
    mask[3:, 2, 1] = 0
    check_finite(Batch(batch.observations, batch.actions, rewards, mask), ["a", "b", "c"], "x")


def test_a_non_finite_iteration_is_skipped_and_the_run_goes_on(tmp_path: Path) -> None:
    rows = train(config("NaNOnFirstSample", num_batches=3), tmp_path / "run", progress=False,
                 tensorboard=False)  # fmt: skip
    logged = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in logged] == [1, 2] and len(rows) == 2
    state = checkpoint.load(tmp_path / "run" / LATEST)
    assert all(torch.isfinite(p).all() for p in state["theta"].values())


def test_repeated_non_finite_data_stops_with_the_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(RunStopped, match="3 consecutive iterations") as error:
        train(config("NaNFromIteration2", num_batches=10), tmp_path / "run", progress=False,
              tensorboard=False)  # fmt: skip
    assert "\n" not in str(error.value)
    state = checkpoint.load(tmp_path / "run" / LATEST)
    assert state["iteration"] == 1
    assert all(torch.isfinite(p).all() for p in state["theta"].values())


def test_meta_step_rejects_non_finite_losses_and_keeps_theta() -> None:
    policy, theta = make_policy()
    batch, advantages = make_batch(1)
    post, post_advantages = make_batch(2)
    post_advantages = post_advantages.clone()
    post_advantages[0, 0, 0] = float("nan")
    data = TaskData(((batch, advantages),), post, post_advantages)
    before = {k: v.clone() for k, v in theta.items()}
    new_theta, _, info = meta_step(policy, theta, {}, data, Config())
    assert not info.accepted
    assert all(torch.equal(new_theta[k], before[k]) for k in theta)


def test_corrupt_and_truncated_checkpoints_get_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    checkpoint.save_atomic(
        {"iteration": 0, "theta": {}, "step_size": {}, "rng": {}, "config": {}}, path
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as error:
        checkpoint.load(path)
    assert "\n" not in str(error.value)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.load(path)
    torch.save({"something": "else"}, path)
    with pytest.raises(CheckpointError, match="not a maml_rl checkpoint"):
        checkpoint.load(path)


@pytest.mark.parametrize("iteration", [-5, 1.5, True, "3"])
def test_a_checkpoint_with_a_checksum_but_no_valid_iteration_is_refused(
    tmp_path: Path, iteration: object
) -> None:
    """Written with a valid checksum (as by hand): evaluate said "maml -4 iterations" and a
    resume "iterations -3-3" for -5."""
    path = tmp_path / "c.pt"
    state = {"iteration": iteration, "theta": {}, "step_size": {}, "rng": {}, "config": {}}
    checkpoint.save_atomic(state, path)
    with pytest.raises(CheckpointError, match=r"not a maml_rl checkpoint \(iteration"):
        checkpoint.load(path)


def test_resume_of_a_corrupt_run_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train(Config(**TINY, num_batches=1), run, progress=False, tensorboard=False)
    (run / LATEST).write_bytes((run / LATEST).read_bytes()[:100])
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt or truncated" in err and len(err.splitlines()) == 1


KILLER = textwrap.dedent(
    """
    import sys, torch
    from maml_rl.checkpoint import save_atomic
    path = sys.argv[1]
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        save_atomic({"iteration": i, "theta": {"w": torch.full((400_000,), float(i))},
                     "step_size": {}, "rng": {}, "config": {}}, path)
    """
)


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pt"
    for delay in (0.3, 0.55, 0.8):
        process = subprocess.Popen(
            [sys.executable, "-c", KILLER, str(path)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )  # fmt: skip
        try:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:  # also when the child failed to start: it writes until killed
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        state = checkpoint.load(path)  # either the previous or the new file, never half of one
        i = state["iteration"]
        assert torch.equal(state["theta"]["w"], torch.full((400_000,), float(i)))


class _ImageEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 1, (4, 4), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)


class ImageObservations(GymOnly):
    """A family whose observations are images: the MLP policy cannot take them."""

    def make_env(self) -> gym.Env:
        return _ImageEnv()


def test_spaces_the_policy_cannot_handle_are_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "navigation", "--out", str(tmp_path / "r"), "--no-progress",
            "--set", "env=test_faults:ImageObservations"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "flat Box observation space" in err and len(err.splitlines()) == 1


def test_a_torn_metrics_line_is_dropped_on_resume_and_named_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash mid-write leaves half a line in metrics.jsonl: resume drops it (the checkpoint
    says which rows are real; the torn row of iteration 2 is lost, its checkpoint is not), plot
    names the file and line in one line (exit 2)."""
    run = tmp_path / "run"
    argv = ["train", "navigation", "--out", str(run), "--no-progress", "--set"]
    tiny = ["meta_batch_size=2", "fast_batch_size=2", "hidden_sizes=[8]", "cg_iters=2"]
    tiny += ["env_kwargs={max_episode_steps: 8}", "num_batches=3"]
    assert main([*argv, *tiny]) == 0
    metrics = run / "metrics.jsonl"
    full = metrics.read_bytes()
    metrics.write_bytes(full[:-100])  # as `truncate -s -100`
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "metrics.jsonl line 3 is not a metrics row" in err and len(err.splitlines()) == 1
    assert main(["train", "--resume", str(run), "--no-progress", "--set", "num_batches=4"]) == 0
    assert [r["iteration"] for r in read_metrics(run)] == [0, 1, 3]


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler catches it."""


def test_a_kill_between_the_two_checkpoint_writes_never_leaves_the_best_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dying after the first of an improving iteration's two writes (latest and best) must not
    leave checkpoint_best.pt behind the best_return that checkpoint_latest.pt records."""
    cfg = Config(num_batches=6, **TINY)
    original = checkpoint.save_atomic
    writes: dict[int, int] = {}
    killed: list[int] = []

    def save_then_die(state: dict, path: Path) -> None:
        writes[state["iteration"]] = writes.get(state["iteration"], 0) + 1
        if state["iteration"] > 0 and writes[state["iteration"]] == 2 and not killed:
            killed.append(state["iteration"])
            raise _Killed
        original(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", save_then_die)
    with pytest.raises(_Killed):
        train(cfg, tmp_path, progress=False, tensorboard=False)
    assert killed, "no iteration after the first improved the best return"
    # the best never lags what the latest records (old order: latest written, then killed)
    latest = checkpoint.load(tmp_path / LATEST)
    best = checkpoint.load(tmp_path / "checkpoint_best.pt")
    assert best["best_return"] >= latest["best_return"]
    assert best["iteration"] >= latest["iteration"]
    monkeypatch.setattr(checkpoint, "save_atomic", original)
    # resume only up to the killed iteration: it is redone and nothing later can mask a lag
    stop = dataclasses.replace(cfg, num_batches=killed[0] + 1)
    train(stop, tmp_path, resume=True, progress=False, tensorboard=False)
    latest = checkpoint.load(tmp_path / LATEST)
    best = checkpoint.load(tmp_path / "checkpoint_best.pt")
    rows = read_metrics(tmp_path)
    assert (
        best["best_return"] == latest["best_return"] == max(r["returns/post_update"] for r in rows)
    )


@pytest.mark.parametrize("num_batches", [2, 5])
def test_a_run_that_completes_no_iteration_says_nothing_was_saved(
    tmp_path: Path, num_batches: int
) -> None:
    """Fewer iterations than the skip limit, all skipped: no "run saved"; three skips in a row:
    no pointer to a checkpoint that was never written."""
    with pytest.raises(RunStopped) as error:
        train(config("NaNAlways", num_batches=num_batches), tmp_path / "run", progress=False,
              tensorboard=False)  # fmt: skip
    message = str(error.value)
    assert "before any iteration completed; nothing was saved in" in message
    assert "checkpoint_latest.pt" not in message and "\n" not in message
    assert not (tmp_path / "run" / LATEST).exists()


class _BreaksMidEpisode(gym.Env):
    """Navigation-like env whose step 3 raises (kind "raise") or returns a 3-vector ("shape")
    for the task with goal x > 0."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)

    def __init__(self, kind: str) -> None:
        self.kind, self.t, self.task = kind, 0, None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.task = (options or {}).get("task", self.task)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        broken = self.t == 3 and self.task is not None and self.task.goal[0] > 0
        if broken and self.kind == "raise":
            raise RuntimeError("simulator exploded")
        obs = np.zeros(3 if broken else 2, np.float32)
        return obs, -1.0, False, self.t >= 8, {}


class BreaksMidEpisode(GymOnly):  # the generic Gymnasium backends
    kind = "raise"

    def make_env(self) -> gym.Env:
        return _BreaksMidEpisode(self.kind)


class WrongShapeMidEpisode(BreaksMidEpisode):
    kind = "shape"


@pytest.mark.parametrize("backend", ["sync", "async"])
@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("BreaksMidEpisode", "step 2: RuntimeError: simulator exploded"),
        ("WrongShapeMidEpisode", "step 2: observation of shape (3,), its observation space has"),
    ],
)
def test_an_env_that_breaks_mid_episode_is_one_line_naming_the_task(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    recwarn: pytest.WarningsRecorder,
    backend: str,
    family: str,
    expected: str,
) -> None:
    """The env breaks while the sampler runs it (the family check is skipped here: it has its
    own test below); nothing is saved and the message names task, trajectory and step.
    Gymnasium's own report of a worker's fault (a warning per worker, with its traceback,
    printed beside our line outside pytest) is not let through."""
    building = importlib.import_module("maml_rl.build")  # where train's family check runs

    monkeypatch.setattr(building, "check_family", lambda *a, **k: None)
    argv = ["train", "navigation", "--out", str(tmp_path / "run"), "--no-progress", "--set"]
    tiny = ["num_batches=1", "meta_batch_size=3", "fast_batch_size=2", "hidden_sizes=[8]"]
    sets = [f"env=test_faults:{family}", f"sampler={backend}", "env_kwargs={}"]
    assert main([*argv, *tiny, *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    if backend == "sync":  # the sync backend knows which environment: task and trajectory
        assert "task " in err and "trajectory " in err and expected in err, err
    else:  # Gymnasium's worker re-raises without its index
        assert "RuntimeError" in err or "shape" in err, err
    leaked = [str(w.message) for w in recwarn if "async_vector_env" in w.filename]
    assert leaked == [], leaked


def test_an_env_that_raises_during_the_family_check_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "navigation", "--out", str(tmp_path / "run"), "--no-progress", "--set"]
    assert main([*argv, "env=test_faults:BreaksMidEpisode", "env_kwargs={}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "RuntimeError: simulator exploded" in err, err
