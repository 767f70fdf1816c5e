"""An evaluation's folder (`DIR/eval/`): the files `maml-rl evaluate` writes, reading them back,
the protocol record that says which evaluations are comparable, and the merge that keeps an
earlier evaluation's methods.

Files (all written atomically through `artifacts`, the protocol last):
`adaptation.csv` (summary rows, COLUMNS), `adaptation_tasks.csv` (per-task returns,
TASK_COLUMNS: [S + 1, N] per method), `adaptation.png`, `evaluation.json` (the protocol, where
each method ran and how long each trained), and for families reporting success `success.csv`
and `success_tasks.csv` in the same layouts.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, replace
from pathlib import Path

import numpy as np

from maml_rl import artifacts
from maml_rl.artifacts import ArtifactError
from maml_rl.checkpoint import CheckpointError
from maml_rl.evaluate import COLUMNS, RAN_ON, TRAINED, Evaluation, SummaryRow
from maml_rl.plot import plot_adaptation


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(rows: Sequence[SummaryRow], path: str | Path) -> None:
    """`path` with a header of COLUMNS and one line per row (floats at full precision),
    written atomically (`artifacts`)."""
    artifacts.write_text(path, _csv_text(COLUMNS, (astuple(row) for row in rows)))


TASK_COLUMNS = ("method", "step", "task", "mean_return")


def write_task_returns(returns: dict[str, np.ndarray], path: str | Path) -> None:
    """`path` with one line per (method, step, task): the per-task returns ([S + 1, N] per
    method) that the summary rows average, so evaluations of several seeds can be pooled;
    written atomically (`artifacts`)."""
    lines = (
        (method, step, task, repr(float(value)))
        for method, values in returns.items()
        for (step, task), value in np.ndenumerate(values)
    )
    artifacts.write_text(path, _csv_text(TASK_COLUMNS, lines))


def read_task_returns(
    path: str | Path, shape: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """The per-task returns written by `write_task_returns`: method -> [S + 1, N] (float64).

    A file that is not one, a malformed or repeated row, or a method whose rows do not fill
    its steps x tasks (or `shape`, the protocol's (S + 1, N), when given) is a one-line
    ArtifactError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no per-task returns at {path}; run `maml-rl evaluate` first")
    cells: dict[str, dict[tuple[int, int], float]] = {}
    with path.open(newline="", errors="replace") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != TASK_COLUMNS:
            raise ArtifactError(f"{path} is not a per-task returns file (columns {TASK_COLUMNS})")
        for number, line in enumerate(reader, start=2):
            try:
                step, task = int(line["step"]), int(line["task"])
                value = float(line["mean_return"])
            except (TypeError, ValueError):
                raise ArtifactError(f"{path}, line {number}: malformed row {line}") from None
            if not math.isfinite(value):  # evaluations refuse non-finite returns: an edit
                raise ArtifactError(f"{path}, line {number}: non-finite mean_return {value}")
            cell = cells.setdefault(line["method"], {})
            if (step, task) in cell or step < 0 or task < 0:
                raise ArtifactError(f"{path}, line {number}: repeated or negative step/task")
            cell[step, task] = value
    returns = {}
    for method, values in cells.items():
        filled = (1 + max(s for s, _ in values), 1 + max(t for _, t in values))
        if len(values) != filled[0] * filled[1] or filled != (shape or filled):
            expected = f"the protocol's {shape[0]} x {shape[1]}" if shape else "steps x tasks"
            raise ArtifactError(
                f"{path}: the {method} rows ({len(values)}) do not fill {expected} (a cut or "
                "edited file)"
            )
        array = np.empty(filled)
        for index, value in values.items():
            array[index] = value
        returns[method] = array
    return returns


PROTOCOL = "evaluation.json"
# Success rates (families reporting success) use the same layouts; their `mean_return` column
# holds the mean success rate.
SUCCESS_OUTPUTS = ("success.csv", "success_tasks.csv")
OUTPUTS = ("adaptation.csv", "adaptation_tasks.csv", "adaptation.png", PROTOCOL, *SUCCESS_OUTPUTS)
WAIT_TO_SAVE_S = 60.0
"""How long `save` waits for another process saving into the same directory."""


_HELD: set[Path] = set()


@contextmanager
def hold_eval_dir(out_dir: str | Path, wait_s: float = 0.0) -> Iterator[None]:
    """Own an evaluation directory (`DIR/eval`) for the block through its lock
    (`artifacts.locked` on `out_dir/.lock`): a second evaluate of the same run, or a
    `train --overwrite` of it, is refused in one line (after waiting up to `wait_s`) instead of
    interleaving. Re-entrant within a process. Nothing is created, and no lock taken, where
    the run directory does not exist (loading the run then says so)."""
    out_dir = Path(out_dir).absolute()
    if out_dir in _HELD or not out_dir.parent.is_dir():
        yield
        return
    created = not out_dir.exists()
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as error:  # a read-only run directory: say so before evaluating anything
        raise ArtifactError(f"cannot write {out_dir}: {error.strerror or error}") from None
    busy = (
        f"another process is evaluating {out_dir.parent} (writing {out_dir}); wait for it to "
        "finish or stop it"
    )
    try:
        with artifacts.locked(out_dir / artifacts.LOCK, busy, wait_s):
            _HELD.add(out_dir)
            try:
                yield
            finally:
                _HELD.discard(out_dir)
    finally:
        if created and [p.name for p in out_dir.iterdir()] == [artifacts.LOCK]:
            shutil.rmtree(out_dir, ignore_errors=True)


RECORDED_SINCE_THE_FIRST: dict[str, type | tuple[type, ...]] = {
    "env": str,
    "checkpoint": str,
    "eval_seed": int,
    "num_trajectories": int,
    "step_sizes": list,
    "num_steps": int,
    "num_tasks": int,
}
"""Protocol keys every evaluation record has held, with their types: a record without one (or
with another type) is damaged, not an older format."""


def read_protocol(path: Path, remedy: str) -> dict:
    """An evaluation record (`evaluation.json`) with KNOWN_DEFAULTS filled in; a one-line
    ArtifactError naming `path` and `remedy` for one that is unreadable, not a mapping, or
    lacks a key of RECORDED_SINCE_THE_FIRST (an emptied or edited file)."""
    record = artifacts.read_json(path, remedy)
    if not isinstance(record, dict):
        raise ArtifactError(f"{path} is not an evaluation record; {remedy}")
    wrong = [
        key
        for key, kind in RECORDED_SINCE_THE_FIRST.items()
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool)
    ]
    if wrong:
        raise ArtifactError(
            f"{path} is not a whole evaluation record ({', '.join(wrong)} missing or of the "
            f"wrong type); {remedy}"
        )
    return with_known_defaults(record)


KNOWN_DEFAULTS: dict[str, object] = {"actions": "sampled"}
"""Protocol keys recorded later whose value before then is known: every evaluation measured
sampled actions until mean ones could be asked for."""


def with_known_defaults(record: dict) -> dict:
    """The protocol record with KNOWN_DEFAULTS filled in where an older evaluation lacks them
    (so that a mean-action evaluation is never merged with, or compared to, a sampled one)."""
    return {**KNOWN_DEFAULTS, **record}


def protocol_difference(a: dict, b: dict, ignore: Iterable[str] = ()) -> str | None:
    """The first protocol key on which `a` and `b` differ, or None. A key that one of them
    lacks (an evaluation saved before the key was recorded) is unknown, not a difference: an
    earlier evaluation keeps merging and comparing on the keys it has."""
    for key in sorted(set(a) & set(b) - set(ignore)):
        if a[key] != b[key]:
            return key
    return None


def same_protocol(a: dict | None, b: dict) -> bool:
    """Whether `a` (None: no earlier evaluation) and `b` are one protocol."""
    return a is not None and protocol_difference(a, b) is None


def _earlier(evaluation: Evaluation, out_dir: Path) -> Evaluation | None:
    """The earlier evaluation in `out_dir` if it has this one's protocol, else None;
    ArtifactError if its files are unreadable or do not fit the protocol."""
    previous = out_dir / PROTOCOL
    record = read_protocol(previous, "it cannot be merged") if previous.is_file() else None
    earlier_ran_on = record.pop(RAN_ON, {}) if record is not None else {}
    earlier_trained = record.pop(TRAINED, {}) if record is not None else {}
    if not same_protocol(record, evaluation.protocol):
        return None
    shape = evaluation.shape
    returns = read_task_returns(out_dir / "adaptation_tasks.csv", shape)
    success_path = out_dir / "success_tasks.csv"
    success = read_task_returns(success_path, shape) if success_path.is_file() else {}
    return replace(
        evaluation, returns=returns, success=success, ran_on=earlier_ran_on, trained=earlier_trained
    )


def _set_aside(out_dir: Path) -> Path:
    """Move the evaluation files in `out_dir` to `out_dir/replaced/<n>/`; the folder."""
    archive = out_dir / "replaced"
    number = 1 + max((int(p.name) for p in archive.glob("[0-9]*") if p.name.isdigit()), default=0)
    target = archive / str(number)
    target.mkdir(parents=True)
    for name in OUTPUTS:
        if (out_dir / name).exists():
            (out_dir / name).rename(target / name)
    return target


def merged(
    evaluation: Evaluation, out_dir: Path, report: Callable[[str], None] | None = None
) -> Evaluation:
    """An earlier evaluation in `out_dir` is never lost: with the same protocol (checkpoint,
    tasks, seeds, steps) its methods that this one did not recompute are kept beside this one's;
    with another protocol its files move to `out_dir/replaced/<n>/`. So do files that cannot
    be merged (an empty or cut `evaluation.json`, per-task rows that do not fill the protocol's
    (S + 1) x N: a killed write or an edit), with a one-line note to `report` (else a warning):
    they are kept for inspection and never block a later evaluation."""
    if not (out_dir / "adaptation_tasks.csv").is_file():
        return evaluation
    try:
        earlier = _earlier(evaluation, out_dir)
    except ArtifactError as error:
        note = f"note: set the earlier evaluation aside in {_set_aside(out_dir)}: {error}"
        (report or warnings.warn)(note)
        return evaluation
    if earlier is None:
        _set_aside(out_dir)
        return evaluation
    kept = {m: r for m, r in earlier.returns.items() if m not in evaluation.returns}
    success = dict(evaluation.success)
    success.update({m: r for m, r in earlier.success.items() if m in kept})
    ran_on = {**{m: earlier.ran_on.get(m, "unrecorded") for m in kept}, **evaluation.ran_on}
    trained = {**{m: earlier.trained[m] for m in kept if m in earlier.trained}}
    returns = {**evaluation.returns, **kept}
    return replace(
        evaluation,
        returns=returns,
        success=success,
        ran_on=ran_on,
        trained={**trained, **evaluation.trained},
    )


def save(
    evaluation: Evaluation, out_dir: str | Path, report: Callable[[str], None] | None = None
) -> tuple[Path, Path]:
    """Write `adaptation.csv` (summary rows), `adaptation_tasks.csv` (per-task returns),
    `adaptation.png` and `evaluation.json` (the protocol), and for families reporting success
    `success.csv` and `success_tasks.csv` (the same layouts) into `out_dir`, after `merged` kept
    what an earlier evaluation there had; returns the paths of the summary and the figure.

    Every file is written atomically, under the directory's lock (`hold_eval_dir`, waiting up
    to WAIT_TO_SAVE_S for another process saving there), the protocol last: a crash leaves the
    old files or the new ones, and a concurrent evaluation's methods are merged, not lost."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with hold_eval_dir(out_dir, WAIT_TO_SAVE_S):
        artifacts.remove_stale_temporaries(out_dir, OUTPUTS)
        evaluation = merged(evaluation, out_dir, report)
        csv_path, png_path = out_dir / "adaptation.csv", out_dir / "adaptation.png"
        rows = evaluation.rows
        write_csv(rows, csv_path)
        write_task_returns(evaluation.returns, out_dir / "adaptation_tasks.csv")
        if evaluation.success:
            write_csv(evaluation.success_rows, out_dir / "success.csv")
            write_task_returns(evaluation.success, out_dir / "success_tasks.csv")
        num_tasks = rows[0].num_tasks
        title = f"{evaluation.env}: adaptation on {num_tasks} held-out tasks"
        plot_adaptation(rows, png_path, title, legend_labels(evaluation))
        artifacts.write_text(out_dir / PROTOCOL, json.dumps(evaluation.record, indent=1) + "\n")
    return csv_path, png_path


def legend_labels(evaluation: Evaluation) -> dict[str, str]:
    """Each method's name with how many iterations its run trained: 'oracle (20 iterations)',
    'random (untrained)'; a method whose count is not recorded keeps its bare name."""
    labels = {"random": "random (untrained)"} if "random" in evaluation.returns else {}
    for method, count in evaluation.trained.items():
        labels[method] = f"{method} ({count} iteration{'s' if count != 1 else ''})"
    return labels
