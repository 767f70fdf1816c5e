"""Figures as PNG files: training curves of runs, and adaptation curves of an evaluation.

Drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no global backend
state), so it works on machines without a display and inside other programs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from maml_rl import artifacts
from maml_rl.checkpoint import CheckpointError
from maml_rl.config import ConfigError
from maml_rl.logger import POST_UPDATE, PRE_UPDATE, read_metrics

if TYPE_CHECKING:
    from maml_rl.evaluate import SummaryRow

PRE, POST = PRE_UPDATE, POST_UPDATE


def _save(figure: Figure, path: str | Path) -> Path:
    """Write `figure` to `path` atomically (`artifacts`), in the format its suffix names."""
    path = Path(path)
    canvas = FigureCanvasAgg(figure)
    fmt = path.suffix.lstrip(".").lower() or "png"
    formats = canvas.get_supported_filetypes()
    if fmt not in formats:
        raise ConfigError(
            f"cannot draw a figure as .{fmt} ({path}); give a file ending in "
            f"{', '.join('.' + name for name in sorted(formats))}"
        )
    artifacts.write_with(path, lambda handle: figure.savefig(handle, dpi=120, format=fmt))
    return path


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's directory name, or its full path where two runs share a name."""
    names = [Path(d).name for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs, strict=True)]


def training_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's algorithm (maml, pretrained, oracle: config.yaml's `algo`), followed by its
    directory where two runs share an algorithm: ``maml (nav-lvc)``."""
    algos = []
    for run_dir in run_dirs:
        saved = artifacts.read_saved_config(run_dir) or {}
        algos.append(str(saved.get("algo", "maml")))
    return [
        algo if algos.count(algo) == 1 else f"{algo} ({label})"
        for algo, label in zip(algos, run_labels(run_dirs), strict=True)
    ]


def _read_runs(run_dirs: Sequence[str | Path]) -> list[list[dict]]:
    """Each run's metrics.jsonl rows (CheckpointError for a missing or empty run)."""
    runs = []
    for run_dir in map(Path, run_dirs):
        artifacts.require_run_dir(run_dir)
        rows = read_metrics(run_dir)
        if not rows:
            raise CheckpointError(f"{run_dir} has no metrics.jsonl rows to plot")
        runs.append(rows)
    return runs


def _style_training_axes(by_iteration: Any, by_steps: Any, ylabel: str, legend: str | None) -> None:
    """Labels, ticks, grid and legend of the (iteration, env steps) training panels."""
    by_iteration.set_xlabel("meta-iteration")
    by_iteration.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_iteration.set_ylabel(ylabel)
    by_steps.set_xlabel("environment steps")
    by_steps.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    for axis in (by_iteration, by_steps):
        axis.grid(alpha=0.3)
    by_iteration.legend(fontsize="small", title=legend)


TRAINING_SMOOTHING = 10
"""Default window of the training curves' moving average, in meta-iterations."""


def plot_training(
    run_dirs: Sequence[str | Path], out: str | Path, smooth: int = TRAINING_SMOOTHING
) -> Path:
    """Pre- and post-update return of each run against iteration and against env steps.

    Post-update returns are solid lines, pre-update returns dashed in the same colour; a run
    without inner steps (pretrained, oracle: pre == post) gets one line. Each curve is the
    trailing moving average over `smooth` iterations (`moving_average`), drawn over the raw
    returns in a light shade; ``smooth=1`` draws the raw returns only. Runs are labelled by
    their algorithm (`training_labels`).
    """
    paths = [Path(d) for d in run_dirs]
    runs = _read_runs(paths)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    by_iteration, by_steps = figure.subplots(1, 2, sharey=True)
    for index, (label, rows) in enumerate(zip(training_labels(paths), runs, strict=True)):
        color = f"C{index % 10}"
        iterations = [r["iteration"] for r in rows]
        env_steps = [r.get("env_steps", float("nan")) for r in rows]
        pre, post = [r[PRE] for r in rows], [r[POST] for r in rows]
        curves = [(post, "-", label)] if pre == post else [
            (post, "-", f"{label} (post-update)"), (pre, "--", f"{label} (pre-update)")
        ]  # fmt: skip
        for axis, x in ((by_iteration, iterations), (by_steps, env_steps)):
            for values, style, name in curves:
                drawn = np.asarray(values)
                if smooth > 1:
                    axis.plot(x, drawn, color=color, linestyle=style, alpha=0.2, linewidth=0.8)
                    drawn = moving_average(drawn, smooth)
                axis.plot(x, drawn, color=color, linestyle=style, label=name)
    legend = f"moving average over {smooth} iterations" if smooth > 1 else None
    _style_training_axes(by_iteration, by_steps, "average return", legend)
    figure.suptitle("Training curves: average return of the sampled trajectories")
    return _save(figure, out)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last min(window, i + 1) values: [L] -> [L]."""
    values = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    index = np.arange(1, len(values) + 1)
    start = np.maximum(0, index - window)
    return (sums[index] - sums[start]) / (index - start)


def seed_band(curves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) over seeds of curves [L_i], cut to the shortest length L.

    With n >= 2 seeds: mean ± t_{0.975, n-1} · std(ddof=1) / sqrt(n), the 95% Student-t
    interval of the mean over seeds; with one seed low = high = mean (no band).
    """
    if not curves:
        raise ValueError("seed_band needs at least one curve")
    length = min(len(c) for c in curves)
    stacked = np.stack([np.asarray(c, dtype=np.float64)[:length] for c in curves])
    mean = stacked.mean(axis=0)
    if len(curves) < 2:
        return mean, mean.copy(), mean.copy()
    half = stats.t.ppf(0.975, len(curves) - 1) * stacked.std(axis=0, ddof=1) / np.sqrt(len(curves))
    return mean, mean - half, mean + half


def plot_training_bands(
    groups: Mapping[str, Sequence[str | Path]], out: str | Path, title: str, window: int = 10
) -> Path:
    """Training curves of groups of runs (e.g. "maml" -> its seeds, "oracle" -> [one run]):
    per group the mean over its runs of the post-update return, `moving_average`d over
    `window` iterations, with the 95% interval over runs shaded (`seed_band`), and the mean
    pre-update return dashed where it differs; against iteration and against environment
    steps (the mean over runs)."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    by_iteration, by_steps = figure.subplots(1, 2, sharey=True)
    for index, (label, run_dirs) in enumerate(groups.items()):
        runs = _read_runs(run_dirs)
        color = f"C{index % 10}"
        post = [moving_average(np.array([r[POST] for r in rows]), window) for rows in runs]
        pre = [moving_average(np.array([r[PRE] for r in rows]), window) for rows in runs]
        mean, low, high = seed_band(post)
        length = len(mean)
        iterations = np.arange(length)
        steps = np.mean([[r.get("env_steps", np.nan) for r in rows[:length]] for rows in runs], 0)
        name = f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})"
        pre_mean = seed_band(pre)[0]
        adapted = not np.allclose(pre_mean, mean)  # pretrained, oracle: pre == post
        for axis, x in ((by_iteration, iterations), (by_steps, steps)):
            axis.plot(x, mean, color=color, label=f"{name}, post-update" if adapted else name)
            if len(runs) > 1:
                axis.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
            if adapted:
                axis.plot(x, pre_mean, color=color, linestyle="--", label=f"{name}, pre-update")
    ylabel = f"average return ({window}-iteration moving average)"
    _style_training_axes(by_iteration, by_steps, ylabel, "shaded: 95% interval over seeds")
    figure.suptitle(title)
    return _save(figure, out)


def plot_adaptation(
    rows: Sequence[SummaryRow],
    out: str | Path,
    title: str,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """One curve per method, mean return against gradient steps, with its shaded 95% CI;
    `labels` names a method in the legend (default: the method)."""
    curves: dict[str, list[SummaryRow]] = defaultdict(list)
    for row in rows:
        curves[row.method].append(row)

    figure = Figure(figsize=(6.4, 4.6), layout="constrained")
    axis = figure.subplots()
    for index, (method, points) in enumerate(curves.items()):
        color = f"C{index % 10}"
        steps = [p.step for p in points]
        axis.plot(
            steps,
            [p.mean_return for p in points],
            marker="o",
            color=color,
            label=(labels or {}).get(method, method),
        )
        axis.fill_between(
            steps,
            [p.ci95_low for p in points],
            [p.ci95_high for p in points],
            color=color,
            alpha=0.2,
            linewidth=0,
        )
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("number of gradient steps")
    axis.set_ylabel("average return")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(title="shaded: 95% CI", fontsize="small")
    return _save(figure, out)
