"""Results of several seeds in one table per task: pooled adaptation curves and run costs.

Each seed's evaluation (`maml-rl evaluate`) writes per-task returns, an array [S + 1, N] per
method. Pooling concatenates them over tasks, so a cell of the table is the mean over all
N x seeds held-out tasks with the Student-t 95% interval of `evaluate.summarize`:
mean ± t_{0.975, M-1} · std(ddof=1) / sqrt(M), M = N x seeds. The interval counts every
(seed, task) pair as one draw; it covers task-to-task and seed-to-seed variation together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maml_rl.checkpoint import CheckpointError
from maml_rl.evaluate import SummaryRow, summarize
from maml_rl.logger import POST_UPDATE, read_metrics

METHODS = ("maml", "pretrained", "random", "oracle")

# Approximate values of Finn et al. (2017), Fig. 5, read off the figures (low precision) and
# gathered in ../shared/REFERENCE.md: env -> method -> return after 0, 1, 2, 3 gradient steps
# (None where the figure gives no usable value). The paper's protocol: rllab physics, H = 200.
PAPER: dict[str, dict[str, tuple[str | None, ...]]] = {
    "halfcheetah-vel": {
        "maml": ("-130", "-75", None, "-60 to -70"),
        "pretrained": ("-130", None, None, "-130"),
        "oracle": ("-60", "-60", "-60", "-60"),
    },
    "halfcheetah-dir": {
        "maml": ("0", "300", None, "320 to 400"),
        "oracle": ("400", "400", "400", "400"),
    },
    "ant-vel": {
        "maml": ("-20", None, None, "100"),
        "oracle": ("120", "120", "120", "120"),
    },
}


def pool(evaluations: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-task returns of several evaluations joined over tasks: method -> [S + 1, sum N].

    Only methods present in every evaluation are kept; all must have the same S.
    """
    if not evaluations:
        raise ValueError("nothing to pool: no evaluations")
    methods = [m for m in evaluations[0] if all(m in e for e in evaluations)]
    pooled = {}
    for method in methods:
        arrays = [np.asarray(e[method], dtype=np.float64) for e in evaluations]
        if len({a.shape[0] for a in arrays}) != 1:
            raise ValueError(f"{method}: evaluations with different numbers of gradient steps")
        pooled[method] = np.concatenate(arrays, axis=1)
    return pooled


def pooled_rows(evaluations: Sequence[Mapping[str, np.ndarray]]) -> list[SummaryRow]:
    """Summary rows (mean, SE, 95% CI per method and step) of the pooled evaluations."""
    return [row for method, r in pool(evaluations).items() for row in summarize(r, method)]


def paired_rows(
    evaluations: Sequence[Mapping[str, np.ndarray]], method: str = "maml", other: str = "pretrained"
) -> list[SummaryRow]:
    """Summary rows of the per-task differences `method − other`, pooled over evaluations.

    Every method of an evaluation sees the same tasks and environment seeds, so the difference
    on each task removes the task-to-task spread that dominates each method's own interval:
    mean(d) ± t_{0.975, M-1} · std(d) / sqrt(M), d = R_method − R_other per (seed, task).
    Empty if either method is missing.
    """
    pooled = pool(evaluations)
    if method not in pooled or other not in pooled:
        return []
    return summarize(pooled[method] - pooled[other], f"{method} − {other}")


def median_rows(
    evaluations: Sequence[Mapping[str, np.ndarray]], method: str = "maml"
) -> list[SummaryRow]:
    """Rows "METHOD, median": the median return over all pooled (seed, task) pairs per step,
    with no interval (NaN), beside the mean rows where a few tasks diverge. Empty if the method
    is missing."""
    pooled = pool(evaluations)
    if method not in pooled:
        return []
    returns = pooled[method]
    nan = math.nan
    return [
        SummaryRow(f"{method}, median", step, float(np.median(values)), nan, nan, nan, values.size)
        for step, values in enumerate(returns)
    ]


@dataclass(frozen=True)
class RunCost:
    """What a training run used, from its metrics.jsonl: iterations, environment steps, and
    wall time as the sum of its sampling and optimisation times (resumes included); and
    `late_gain`, how much its training return still rose at its end (see `late_gain`)."""

    iterations: int
    env_steps: int
    wall_s: float
    late_gain: float


def late_gain(returns: Sequence[float] | np.ndarray, fraction: float = 0.1) -> float:
    """How much a training curve still rose at its end: with w = max(1, floor(fraction · T))
    for T iterations, mean(R[T-w:]) − mean(R[T-2w:T-w]) of the per-iteration training returns
    R [T]. Near zero (against the curve's rise) for a curve that has flattened; NaN when
    T < 2w."""
    values = np.asarray(returns, dtype=np.float64)
    window = max(1, math.floor(fraction * values.size))
    if values.size < 2 * window:
        return math.nan
    return float(values[-window:].mean() - values[-2 * window : -window].mean())


def run_cost(run_dir: str | Path) -> RunCost:
    """The RunCost of `run_dir` (CheckpointError if it has no metrics)."""
    rows = read_metrics(run_dir)
    if not rows:
        raise CheckpointError(f"{run_dir} has no metrics.jsonl rows")
    wall = sum(r["time/sampling_s"] + r["time/optimization_s"] for r in rows)
    gain = late_gain([r[POST_UPDATE] for r in rows]) if POST_UPDATE in rows[0] else math.nan
    return RunCost(rows[-1]["iteration"] + 1, int(rows[-1]["env_steps"]), float(wall), gain)


def format_cell(row: SummaryRow) -> str:
    """'mean ± half-width of the 95% CI', or the mean alone where there is no interval."""
    if math.isnan(row.ci95_high):
        return f"{row.mean_return:.1f}"
    return f"{row.mean_return:.1f} ± {row.ci95_high - row.mean_return:.1f}"


def markdown_table(env: str, rows: Sequence[SummaryRow]) -> str:
    """A Markdown table: one line per method, the return after each number of gradient steps
    (mean ± 95% CI half-width) and the paper's approximate values where it gives them."""
    steps = sorted({row.step for row in rows})
    paper = PAPER.get(env, {})
    header = ["method", *(f"{s} step{'s' if s != 1 else ''}" for s in steps)]
    if paper:
        header.append("paper (" + " / ".join(str(s) for s in steps) + " steps, H = 200)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = {(row.method, row.step): row for row in rows}
    present = {k[0] for k in cells}
    methods = [n for m in METHODS for n in (m, f"{m}, median") if n in present]
    methods += sorted(present - set(methods))
    for method in methods:
        line = [method, *(format_cell(cells[method, s]) for s in steps if (method, s) in cells)]
        if paper:
            values = paper.get(method, ())
            line.append(" / ".join(v or "–" for v in values[: len(steps)]) if values else "–")
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)
