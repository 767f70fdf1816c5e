"""`maml-rl render`: the trajectories it shows are evaluate's (same tasks, seeds, sampler and
adaptation), navigation draws them in the plane, MuJoCo replays them exactly and films them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from process_env_helpers import GymOnly

from maml_rl.cli import main
from maml_rl.errors import TaskFamilyError
from maml_rl.evaluate import held_out, load_run, maml_step_sizes, method_batches, step_size_schedule
from maml_rl.render import (
    _Renderers,
    _replay,
    adaptation_clips,
    describe_task,
    render,
    steps_label,
)
from maml_rl_envs.navigation import Navigation2D

TINY = ["meta_batch_size=3", "fast_batch_size=3", "hidden_sizes=[8]", "cg_iters=2"]


def trained(tmp_path: Path, config: str, *extra: str) -> Path:
    run = tmp_path / config
    argv = ["train", config, "--out", str(run), "--no-progress", "--set", "num_batches=1"]
    assert main([*argv, *TINY, *extra]) == 0
    return run


def test_render_shows_exactly_the_trajectories_evaluate_samples(tmp_path: Path) -> None:
    run_dir = trained(tmp_path, "navigation", "env_kwargs={max_episode_steps: 12}")
    clips = adaptation_clips(run_dir, steps=(0, 2), first_task=3, num_tasks=2, num_eval_tasks=6)
    # evaluate's batches for all 6 held-out tasks after 0..2 steps, sliced to tasks 3 and 4
    run = load_run(run_dir)
    chosen = held_out(run.cfg, 6, 2, None)
    steps = maml_step_sizes(run, step_size_schedule(run.cfg.fast_lr, 2))
    full = method_batches(run.cfg, run.theta, 3, run.cfg, chosen.tasks, steps, chosen.seeds,
                          chosen.eval_seed)  # fmt: skip
    assert clips.tasks == chosen.tasks[3:5]
    for shown, step in zip(clips.batches, (0, 2), strict=True):
        whole = full[step]
        for name in ("observations", "actions", "rewards", "mask"):
            torch.testing.assert_close(getattr(shown, name), getattr(whole, name)[:, 3:5])

    out = render(clips, tmp_path / "nav.png")
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 400 and image.std() > 0


def test_render_with_mean_actions_shows_evaluates_mean_action_episodes(tmp_path: Path) -> None:
    run_dir = trained(tmp_path, "navigation", "env_kwargs={max_episode_steps: 12}")
    clips = adaptation_clips(
        run_dir, steps=(0, 1), first_task=1, num_tasks=1, num_eval_tasks=3, actions="mean"
    )
    run = load_run(run_dir)
    chosen = held_out(run.cfg, 3, 1, None)
    steps = maml_step_sizes(run, step_size_schedule(run.cfg.fast_lr, 1))
    full = method_batches(run.cfg, run.theta, 3, run.cfg, chosen.tasks, steps, chosen.seeds,
                          chosen.eval_seed, actions="mean")  # fmt: skip
    for shown, whole in zip(clips.batches, full, strict=True):
        torch.testing.assert_close(shown.actions, whole.actions[:, 1:2])
        # the K mean-action episodes from navigation's fixed start are one and the same
        assert torch.equal(shown.actions[:, :, 0], shown.actions[:, :, 2])


def test_mujoco_clips_replay_the_sampled_trajectory_and_are_filmed(tmp_path: Path) -> None:
    run_dir = trained(tmp_path, "halfcheetah-vel", "env_kwargs={max_episode_steps: 6}")
    clips = adaptation_clips(run_dir, steps=(0, 1), num_tasks=1, num_eval_tasks=2)
    out = render(clips, tmp_path / "clip.gif", trajectory=1)
    import imageio.v2 as imageio

    frames = imageio.mimread(out)
    assert len(frames) == 7  # 6 steps: a frame before each and one after the last
    assert frames[0].shape == (240, 2 * 320, 3)
    assert np.asarray(frames[3]).std() > 0
    # the clips of the two steps (left, right) show different motions below their labels
    middle = np.asarray(frames[5])[20:].astype(float)
    assert np.abs(middle[:, :320] - middle[:, 320:]).mean() > 1.0
    # a trajectory that is not the one sampled is caught, not filmed
    batch = clips.batches[0]
    wrong = dataclasses.replace(batch, actions=batch.actions + 5.0)
    env = clips.family.make_env()
    renderers = _Renderers(clips.family)
    try:
        seed = clips.seeds[0] + 1
        _replay(env, renderers, clips.tasks[0], batch, 0, 1, seed)  # the true one replays
        with pytest.raises(TaskFamilyError, match="diverged from the sampled trajectory"):
            _replay(env, renderers, clips.tasks[0], wrong, 0, 1, seed)
    finally:
        renderers.close()
        env.close()


class Undrawable(GymOnly):
    """A plug-in family with neither a MuJoCo model nor a drawing hook."""


def test_a_family_that_cannot_render_and_bad_requests_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = trained(tmp_path, "navigation", "env_kwargs={max_episode_steps: 5}")
    clips = adaptation_clips(run_dir, steps=(0,), num_eval_tasks=2)
    clips = dataclasses.replace(clips, family=Undrawable())
    with pytest.raises(TaskFamilyError, match=r"no MuJoCo model .* no draw_trajectories"):
        render(clips, tmp_path / "x.mp4")
    run = str(run_dir)
    cases = [
        (["render", run, "--task", "1", "--num-tasks", "2"], "--task I or --num-tasks N"),
        (["render", run, "--steps", "0,x"], "--steps expects numbers"),
        (["render", run, "--steps", "-1"], "--steps must be numbers of gradient steps >= 0"),
        (["render", run, "--task", "40"], "are not among the 40 held-out tasks"),
        (["render", run, "--out", str(tmp_path / "a.mp4")], "give an --out FILE.png"),
        (["render", run, "--trajectory", "7"], "--trajectory must be in 0..2"),
        (["render", str(tmp_path)], "checkpoint"),  # a directory without a checkpoint
    ]
    capsys.readouterr()
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, (argv, err)
    assert main(["render", run, "--steps", "0,1"]) == 0
    assert (run_dir / "render" / "tasks0-0_steps0-1.png").is_file()


def test_describe_task() -> None:
    from maml_rl_envs.mujoco_base import GoalTask, VelocityTask

    assert describe_task(VelocityTask(1.23456)) == "velocity=1.23"
    assert describe_task(GoalTask((1.0, -2.5))) == "goal=(1.00, -2.50)"


def test_panels_and_clips_say_1_step_not_1_steps() -> None:
    assert [steps_label(n) for n in (0, 1, 3)] == ["0 steps", "1 step", "3 steps"]


def test_an_unavailable_gl_backend_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    import subprocess
    import sys

    run_dir = trained(tmp_path, "navigation", "env_kwargs={max_episode_steps: 5}")
    done = subprocess.run(
        [sys.executable, "-m", "maml_rl.cli", "render", str(run_dir)],
        env={**os.environ, "MUJOCO_GL": "bogus"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "MUJOCO_GL=bogus" in err and "libegl1" in err, err


def test_one_renderer_per_model_with_the_family_camera_when_the_model_has_it() -> None:
    """A family whose tasks switch MuJoCo models (Meta-World ML10) gets a renderer per model;
    the camera is the family's render_camera if the model has it, else track, else free."""
    from maml_rl.tasks import make_family

    class Cheetah:
        render_camera = "no-such-camera"

    cheetah, ant = (make_family(n).make_env() for n in ("halfcheetah-vel", "ant-vel"))
    assert isinstance(cheetah.unwrapped, MujocoEnv) and isinstance(ant.unwrapped, MujocoEnv)
    renderers = _Renderers(Cheetah())  # type: ignore[arg-type]
    try:
        first, camera = renderers(cheetah.unwrapped.model)
        assert camera == "track"  # the family's camera is missing from this model
        assert renderers(cheetah.unwrapped.model)[0] is first  # built once per model
        assert renderers(ant.unwrapped.model)[0] is not first
    finally:
        renderers.close()
        cheetah.close()
        ant.close()


def test_triton_is_loaded_before_the_first_opengl_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mesa's EGL (llvmpipe) loads its own LLVM; triton's, loaded after it, segfaults the
    process at torch's first jvp. The renderer imports an installed triton before its first
    OpenGL context (here a stand-in package, and a stand-in Renderer that checks the order)."""
    import sys

    import mujoco

    fake = tmp_path / "triton"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    made = []

    class Renderer:
        def __init__(self, model: object, height: int, width: int) -> None:
            assert "triton" in sys.modules, "an OpenGL context before triton was loaded"
            made.append(model)

        def close(self) -> None:
            pass

    monkeypatch.setattr(mujoco, "Renderer", Renderer)
    from maml_rl.tasks import make_family

    cheetah = make_family("halfcheetah-vel").make_env()
    try:
        assert isinstance(cheetah.unwrapped, MujocoEnv)
        _Renderers(Navigation2D())(cheetah.unwrapped.model)
        assert made == [cheetah.unwrapped.model]
    finally:
        cheetah.close()
        sys.modules.pop("triton", None)  # the stand-in, for the tests that follow


SEGFAULT_PROBE = """
import torch
from torch.func import jvp
from maml_rl.render import _Renderers
from maml_rl.tasks import make_family

env = make_family("halfcheetah-vel").make_env()
renderers = _Renderers(make_family("halfcheetah-vel"))
renderers(env.unwrapped.model)
renderers.close()
x = torch.randn(8, 4, dtype=torch.float64)
print(float(jvp(lambda a: torch.sigmoid(2.0 * a), (x,), (torch.ones_like(x),))[1].sum()))
"""


def test_rendering_then_a_forward_mode_derivative_runs_where_triton_is_installed() -> None:
    """The crash itself, in a child process: render with EGL, then torch.func.jvp (which
    imports triton where a CUDA build of torch brought it)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (torch's CPU build): nothing can crash")
    done = subprocess.run(
        [sys.executable, "-c", SEGFAULT_PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
