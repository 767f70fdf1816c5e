"""Paired comparison of two runs' evaluations on the same held-out tasks: A − B per step.

`maml-rl evaluate` draws its held-out tasks and sampling seeds from the evaluation stream of
its eval seed, so two runs of one family evaluated with the same protocol (eval seed, number
of tasks and steps, step sizes, K) see the same tasks and environment seeds. The per-task
difference d_n = R_A,n − R_B,n then removes the task-to-task spread that dominates each run's
own interval: mean(d) ± t_{0.975, N-1} · std(d, ddof=1) / sqrt(N) (`evaluate.summarize`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maml_rl import artifacts
from maml_rl.checkpoint import CheckpointError
from maml_rl.evaluate import RAN_ON, TRAINED, SummaryRow, summarize
from maml_rl.evaluation_files import (
    PROTOCOL,
    protocol_difference,
    read_protocol,
    read_task_returns,
)

# Keys of evaluation.json that may differ between the two runs: which checkpoint was
# evaluated, where each method ran (round-off only) and how long each had trained.
RUN_SPECIFIC = ("checkpoint", RAN_ON, TRAINED)


@dataclass(frozen=True)
class RunEvaluation:
    """One run's saved evaluation: its protocol and per-task returns, method -> [S + 1, N]."""

    run_dir: Path
    protocol: dict
    returns: dict[str, np.ndarray]
    success: dict[str, np.ndarray]
    """Per-task success rates (families reporting success), else empty."""


def evaluation_folder(path: Path) -> Path:
    """Where the evaluation of `path` lies: `path` itself when it holds evaluation.json (an
    `evaluate --out` folder), else the run directory's `eval/` (CheckpointError if neither)."""
    if (path / PROTOCOL).is_file():
        return path
    if (path / "eval" / PROTOCOL).is_file():
        return path / "eval"
    raise CheckpointError(
        f"{path} has no evaluation (no {PROTOCOL} in it or in its eval/); "
        f"run `maml-rl evaluate RUN_DIR` and compare the run directories"
    )


def load_evaluation(run_dir: str | Path) -> RunEvaluation:
    """An evaluation's evaluation.json, adaptation_tasks.csv and, where the family reports
    success, success_tasks.csv: from DIR/eval/ of a run directory, or from DIR itself (an
    `evaluate --out` folder); CheckpointError if there is none."""
    run_dir = Path(run_dir)
    folder = evaluation_folder(run_dir)
    protocol_path = folder / PROTOCOL
    if folder == run_dir:  # an `evaluate --out` folder: which run it evaluated is not known
        remedy = f"evaluate the run again: maml-rl evaluate RUN_DIR --out {run_dir}"
    else:
        remedy = f"evaluate the run again: maml-rl evaluate {run_dir}"
    protocol = read_protocol(protocol_path, remedy)
    shape = (protocol["num_steps"] + 1, protocol["num_tasks"])  # the per-task rows fill it
    if "env_kwargs" not in protocol:  # saved before it was recorded: the run's, if it says
        saved = None if folder == run_dir else _run_env_kwargs(run_dir, protocol.get("env"))
        protocol["env_kwargs"] = saved
        if protocol["env_kwargs"] is None:
            del protocol["env_kwargs"]  # unknown: compared on the other keys
    returns = read_task_returns(folder / "adaptation_tasks.csv", shape)
    success_path = folder / "success_tasks.csv"
    success = read_task_returns(success_path, shape) if success_path.is_file() else {}
    return RunEvaluation(run_dir, protocol, returns, success)


def _run_env_kwargs(run_dir: Path, env: object) -> dict | None:
    """The env_kwargs of the run's config.yaml (they cannot change on resume) when it is the
    evaluated family's; None without one (ArtifactError when it cannot be read)."""
    saved = artifacts.read_saved_config(run_dir)
    if saved is None or saved.get("env") != env:
        return None
    kwargs = saved.get("env_kwargs", {})
    return json.loads(json.dumps(kwargs)) if isinstance(kwargs, dict) else None


def check_comparable(a: RunEvaluation, b: RunEvaluation, own_step_sizes: bool = False) -> None:
    """CheckpointError naming the first protocol key on which the two evaluations differ:
    their held-out tasks (family and its kwargs, eval seed, numbers of tasks, steps and
    trajectories) or step sizes. A key one of them lacks (saved before it was recorded) is
    not compared. With `own_step_sizes` each run may have adapted with its own step sizes
    (a multi-step or meta-learned one's): the tasks and environment seeds do not depend on
    them, so the difference then compares the two adaptations as wholes."""
    ignore = (*RUN_SPECIFIC, "step_sizes") if own_step_sizes else RUN_SPECIFIC
    key = protocol_difference(a.protocol, b.protocol, ignore)
    if key is not None:
        hint = "" if key != "step_sizes" else " (or compare with --own-step-sizes)"
        raise CheckpointError(
            f"{a.run_dir} and {b.run_dir} were evaluated with different {key} "
            f"({a.protocol[key]!r} vs {b.protocol[key]!r}), so on different held-out tasks "
            "or steps; evaluate both runs of one family with the same env_kwargs, --eval-seed, "
            f"--num-tasks, --num-steps, --step-sizes and --actions{hint}"
        )


def paired_difference(
    a: RunEvaluation,
    b: RunEvaluation,
    method: str = "maml",
    success: bool = False,
    own_step_sizes: bool = False,
) -> tuple[list[SummaryRow], list[SummaryRow], list[SummaryRow]]:
    """Summary rows of A's `method`, of B's, and of the paired per-task differences A − B,
    of the returns or (`success`) of the success rates (`own_step_sizes`: see
    `check_comparable`)."""
    check_comparable(a, b, own_step_sizes)
    what = "success rates" if success else "returns"
    for run in (a, b):
        values = run.success if success else run.returns
        if method not in values:
            have = ", ".join(sorted(values)) or "none"
            raise CheckpointError(
                f"{run.run_dir}'s evaluation has no '{method}' {what} (it has {have})"
            )
    ra = (a.success if success else a.returns)[method]
    rb = (b.success if success else b.returns)[method]
    if ra.shape != rb.shape:  # same protocol, so only a hand-edited file gets here
        raise CheckpointError(f"per-task returns of shapes {ra.shape} and {rb.shape} differ")
    return (
        summarize(ra, f"{method} A"),
        summarize(rb, f"{method} B"),
        summarize(ra - rb, "A − B"),
    )
