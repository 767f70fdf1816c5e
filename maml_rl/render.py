"""Watch adaptation: the policy on held-out tasks after each listed number of gradient steps.

A consumer of `evaluate`: the held-out tasks, sampling seeds, step sizes, sampler and
adaptation are `evaluate.held_out` and `evaluate.method_batches` (`maml.collect`), so the
trajectories shown are exactly those `maml-rl evaluate DIR --num-steps S` averages (S the
largest step listed). Nothing is sampled a second time:

* a family with a drawing hook, ``draw_trajectories(ax, task, observations [T, K, D],
  mask [T, K])`` (2D navigation), gives a PNG: one row per task, one panel per step, the K
  trajectories in the plane and the goal (the paper's Fig. 4);
* a family whose environment is a MuJoCo one (``env.unwrapped.model`` / ``.data``) gives a
  video: trajectory k of each step is *replayed* from its recorded actions in a fresh
  environment reset with the seed the sampler used (MuJoCo is deterministic), checked step by
  step against the recorded observations, and rendered offscreen; the clips of one task play
  side by side, each labelled with its step, return and task, the camera following the robot
  (``track`` camera when the model has one, or the family's ``render_camera``: Meta-World's
  "topview"); tasks play one after another.

Offscreen rendering needs an OpenGL backend: ``MUJOCO_GL=egl`` (the default ``maml-rl`` sets
when there is no display, before MuJoCo is imported: `maml_rl.runtime.configure_process`, which
a script calls first for the same) or ``osmesa``. Writing MP4 needs
``imageio-ffmpeg`` (``pip install maml-rl[render]``); GIF needs only pillow.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from maml_rl import artifacts
from maml_rl.actions import env_actions
from maml_rl.build import run_sizes
from maml_rl.config import ConfigError
from maml_rl.errors import TaskFamilyError
from maml_rl.evaluate import (
    held_out,
    load_run,
    maml_step_sizes,
    method_batches,
    step_size_schedule,
)
from maml_rl.memory import check_run
from maml_rl.tasks import Task, TaskFamily, make_family
from maml_rl.types import Batch

VIDEO_SUFFIXES = (".mp4", ".gif")


@dataclass(frozen=True)
class Clips:
    """What is shown: the held-out tasks [first, first + n) after each of `steps` gradient
    steps, their batches (one per step, [T, n, K, ...]) and the run they come from."""

    family: TaskFamily
    tasks: list[Task]
    first_task: int
    steps: tuple[int, ...]
    batches: list[Batch]
    seeds: list[int]
    num_trajectories: int


MAX_RENDER_STEPS = 1000
"""The most gradient steps `render` adapts for (each step samples N x K episodes first)."""


def adaptation_clips(
    run_dir: str | Path,
    steps: Sequence[int] = (0, 1, 3),
    first_task: int = 0,
    num_tasks: int = 1,
    which: str = "latest",
    eval_seed: int | None = None,
    num_eval_tasks: int = 40,
    device: str | None = None,
    actions: str = "sampled",
) -> Clips:
    """Sample held-out tasks first_task .. first_task + num_tasks - 1 (of `num_eval_tasks`, as
    `evaluate` draws them) with the run's policy, adapted as `evaluate` adapts it; keep the
    batches after each number of steps in `steps`. device: where the policy runs (default:
    the device the run trained on); actions: show the sampled episodes or the mean-action ones
    (`evaluate --actions`)."""
    steps = tuple(sorted(set(int(s) for s in steps)))
    if not steps or steps[0] < 0 or steps[-1] > MAX_RENDER_STEPS:
        raise ConfigError(
            f"--steps must be numbers of gradient steps >= 0 and <= {MAX_RENDER_STEPS}, "
            f"got {list(steps)}"
        )
    if num_tasks < 1 or first_task < 0 or first_task + num_tasks > num_eval_tasks:
        raise ConfigError(
            f"tasks {first_task}..{first_task + num_tasks - 1} are not among the "
            f"{num_eval_tasks} held-out tasks (0..{num_eval_tasks - 1})"
        )
    run = load_run(run_dir, which, device)
    cfg = run.cfg
    if cfg.algo != "maml":
        raise ConfigError(f"{run.run_dir} is an algo={cfg.algo} run; render a MAML run")
    family = make_family(cfg.env, cfg.env_kwargs)
    _refuse_undrawable(family)  # before sampling, which takes seconds
    num_steps = steps[-1]
    # before drawing seeds
    check_run(run_sizes(cfg, num_tasks, num_steps, family, kind="evaluation"))
    chosen = held_out(cfg, num_eval_tasks, num_steps, eval_seed)
    schedule = step_size_schedule(cfg.fast_lr, num_steps)
    tasks = chosen.tasks[first_task : first_task + num_tasks]
    batches = method_batches(
        cfg,
        run.theta,
        cfg.fast_batch_size,
        cfg,
        tasks,
        maml_step_sizes(run, schedule),
        chosen.seeds,
        chosen.eval_seed,
        first_task=first_task,
        actions=actions,
    )
    return Clips(
        family=family,
        tasks=tasks,
        first_task=first_task,
        steps=steps,
        batches=[batches[s] for s in steps],
        seeds=[chosen.seeds[s] for s in steps],
        num_trajectories=cfg.fast_batch_size,
    )


def steps_label(steps: int) -> str:
    """'0 steps', '1 step', '3 steps': a panel's or clip's number of gradient steps."""
    return f"{steps} step" if steps == 1 else f"{steps} steps"


def describe_task(task: Task) -> str:
    """A short label of a task: its dataclass fields (`velocity=1.23`), else its repr."""
    if not is_dataclass(task):
        return repr(task)

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, tuple):
            return "(" + ", ".join(fmt(v) for v in value) + ")"
        return str(value)

    return ", ".join(f"{f.name}={fmt(getattr(task, f.name))}" for f in fields(task))


@runtime_checkable
class DrawsTrajectories(Protocol):
    """A family with a drawing hook: K trajectories of one task on matplotlib axes."""

    def draw_trajectories(
        self, ax: Any, task: Task, observations: np.ndarray, mask: np.ndarray
    ) -> None: ...


def can_draw(family: TaskFamily) -> bool:
    return isinstance(family, DrawsTrajectories) and callable(family.draw_trajectories)


def mujoco_env(family: TaskFamily) -> Any | None:
    """A fresh environment of the family if it is a MuJoCo one, else None (closed)."""
    env = family.make_env()
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "model") and hasattr(unwrapped, "data"):
        return env
    env.close()
    return None


def _refuse_undrawable(family: TaskFamily) -> None:
    """A one-line TaskFamilyError for a family that neither draws nor has a MuJoCo env."""
    if can_draw(family):
        return
    env = mujoco_env(family)
    if env is None:
        raise TaskFamilyError(
            f"cannot render {family!r}: its environment has no MuJoCo model "
            "(env.unwrapped.model) and the family no draw_trajectories(ax, task, observations, "
            "mask) method"
        )
    env.close()


def default_suffix(family: TaskFamily) -> str:
    if can_draw(family):
        return ".png"
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return ".gif"
    return ".mp4"


def render(
    clips: Clips, out: str | Path, trajectory: int = 0, fps: int = 20, stride: int = 1
) -> Path:
    """Write the clips to `out` (.png for a drawing family, .mp4 / .gif for a MuJoCo one);
    a video keeps every `stride`-th frame (played at fps / stride: real time stays real)."""
    out = Path(out)
    if not 0 <= trajectory < clips.num_trajectories:
        raise ConfigError(
            f"--trajectory must be in 0..{clips.num_trajectories - 1}, got {trajectory}"
        )
    if can_draw(clips.family):
        if out.suffix != ".png":
            raise ConfigError(f"{clips.family!r} draws trajectories: give an --out FILE.png")
        return _draw(clips, out)
    _refuse_undrawable(clips.family)
    env = mujoco_env(clips.family)
    assert env is not None
    if stride < 1:
        env.close()
        raise ConfigError(f"--stride must be >= 1, got {stride}")
    if out.suffix not in VIDEO_SUFFIXES:
        env.close()
        raise ConfigError("a MuJoCo family renders a video: give --out FILE.mp4 or FILE.gif")
    try:
        frames = _video_frames(clips, env, trajectory)
    finally:
        env.close()
    return _write_video(frames[::stride], out, max(1, round(fps / stride)))


def _draw(clips: Clips, out: Path) -> Path:
    """Drawn with matplotlib's object-oriented API on the Agg canvas: no pyplot, no global
    backend (a notebook's stays as it was)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    family = clips.family
    if not isinstance(family, DrawsTrajectories):
        raise TypeError(f"{family!r} has no draw_trajectories method")
    rows, cols = len(clips.tasks), len(clips.steps)
    figure = Figure(figsize=(3.2 * cols, 3.2 * rows))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for n, task in enumerate(clips.tasks):
        for c, (step, batch) in enumerate(zip(clips.steps, clips.batches, strict=True)):
            ax = axes[n][c]
            observations = batch.observations[:, n].double().cpu().numpy()
            mask = batch.mask[:, n].cpu().numpy()
            family.draw_trajectories(ax, task, observations, mask)
            mean_return = float(batch.episode_returns[n].mean())
            ax.set_title(
                f"task {clips.first_task + n}, {steps_label(step)}: return {mean_return:.1f}"
            )
    figure.tight_layout()
    artifacts.write_with(out, lambda handle: figure.savefig(handle, dpi=100, format="png"))
    return out


def _load_triton() -> None:
    """Import triton, where it is installed, before the first OpenGL context.

    Without a GPU, EGL renders with Mesa's llvmpipe, which loads its own LLVM into the process;
    triton (which the CUDA builds of torch bring) loaded after it crashes the process with a
    segmentation fault. torch imports triton lazily, at its first forward-mode derivative
    (`torch.func.jvp`, which the meta-step's Fisher products use) or `torch.compile`, so a
    session that renders and then trains would crash there. Loaded first, both coexist.
    """
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


class _Renderers:
    """One offscreen renderer per MuJoCo model the environment shows (a family like
    Meta-World ML10 switches models with its tasks), and the camera of each.

    The camera is the family's ``render_camera`` when the model has it, else ``track`` (the
    MuJoCo robots' tracking camera) when it has one, else the free camera."""

    def __init__(self, family: TaskFamily) -> None:
        self.preferred = [c for c in (getattr(family, "render_camera", None), "track") if c]
        self._made: dict[int, tuple[Any, str | int]] = {}

    def __call__(self, model: Any) -> tuple[Any, str | int]:
        import mujoco

        if id(model) not in self._made:
            model.light_castshadow[:] = 0  # 5-10x faster software rendering, same scene
            model.mat_reflectance[:] = 0
            named = [c for c in self.preferred
                     if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) >= 0]  # fmt: skip
            _load_triton()
            try:
                renderer = mujoco.Renderer(model, 240, 320)
            except Exception as error:  # no OpenGL backend
                raise TaskFamilyError(
                    f"offscreen rendering failed ({type(error).__name__}: {error}); set "
                    "MUJOCO_GL=egl (package libegl1) or MUJOCO_GL=osmesa (package libosmesa6)"
                ) from None
            self._made[id(model)] = (renderer, named[0] if named else -1)
        return self._made[id(model)]

    def close(self) -> None:
        for renderer, _ in self._made.values():
            renderer.close()


def _video_frames(clips: Clips, env: Any, trajectory: int) -> list[np.ndarray]:
    """Frames [H, W · len(steps), 3] of every task, clips of one task side by side."""
    renderers = _Renderers(clips.family)
    renderers(env.unwrapped.model)  # fails here, in one line, without an OpenGL backend
    frames: list[np.ndarray] = []
    try:
        for n, task in enumerate(clips.tasks):
            row = []
            for step, batch, seed in zip(clips.steps, clips.batches, clips.seeds, strict=True):
                index = (clips.first_task + n) * clips.num_trajectories + trajectory
                images = _replay(env, renderers, task, batch, n, trajectory, seed + index)
                label = (
                    f"{steps_label(step)}  "
                    f"return {float(batch.episode_returns[n, trajectory]):.1f}  "
                    f"{describe_task(task)}"
                )
                row.append([_label(image, label) for image in images])
            length = max(len(clip) for clip in row)
            for t in range(length):
                frames.append(np.concatenate([clip[min(t, len(clip) - 1)] for clip in row], 1))
    finally:
        renderers.close()
    return frames


def _replay(
    env: Any,
    renderers: _Renderers,
    task: Task,
    batch: Batch,
    n: int,
    k: int,
    seed: int,
) -> list[np.ndarray]:
    """Replays trajectory k of task n from its actions; frames before each step and after the
    last one. Raises TaskFamilyError if the replay leaves the recorded observations."""
    observations = batch.observations[:, n, k].double().cpu().numpy()
    actions = batch.actions[:, n, k].double().cpu().numpy()
    length = int(batch.mask[:, n, k].sum())
    obs, _ = env.reset(seed=seed, options={"task": task})
    renderer, camera = renderers(env.unwrapped.model)
    images = []
    for t in range(length):
        if not np.allclose(obs, observations[t], rtol=1e-4, atol=1e-4):
            raise TaskFamilyError(
                f"replaying task {task} diverged from the sampled trajectory at step {t}: "
                "the environment is not deterministic given its seed and actions"
            )
        renderer.update_scene(env.unwrapped.data, camera=camera)
        images.append(renderer.render().copy())
        obs, *_ = env.step(env_actions(actions[t], env.action_space))  # as the sampler sent
    renderer.update_scene(env.unwrapped.data, camera=camera)
    images.append(renderer.render().copy())
    return images


def _label(image: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, picture.width, 14), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(picture)


def _write_video(frames: Sequence[np.ndarray], out: Path, fps: int) -> Path:
    import imageio.v2 as imageio

    if out.suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ConfigError(
                "writing .mp4 needs imageio-ffmpeg (pip install 'maml-rl[render]'); "
                "or give --out FILE.gif"
            ) from None
    with artifacts.replacing(out) as tmp:  # a killed render leaves no cut video behind
        if out.suffix == ".mp4":
            imageio.mimwrite(tmp, list(frames), fps=fps, macro_block_size=1)
        else:
            imageio.mimwrite(tmp, list(frames), duration=1000 / fps, loop=0)
    return out
