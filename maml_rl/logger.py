"""Run logging: `metrics.jsonl`, TensorBoard events and a progress bar. The only module that prints.

Metric names are `group/name` (`returns/pre_update`, `meta/kl_after`, `time/sampling_s`).
On a terminal the progress is a labelled bar; without one (a log file, `nohup`, CI) or with
`progress=False` it is one line per meta-iteration.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from maml_rl import artifacts
from maml_rl.errors import CheckpointError

# The training returns every run logs per meta-iteration (a baseline logs pre == post).
PRE_UPDATE, POST_UPDATE = "returns/pre_update", "returns/post_update"
TENSORBOARD_WAIT_S = 10.0
PACE_WINDOW = 20
"""How many recent iterations the ETA of the per-iteration lines takes its pace from."""
"""The longest a flush or close of the TensorBoard writer may take (its worker thread can
wedge, and Ctrl-C must not hang on it): past it, TensorBoard is given up for the run."""


def _bounded(call: Callable[[], object], wait_s: float) -> bool:
    """Run `call` in a daemon thread for at most `wait_s` seconds: True if it finished (its
    exception re-raised here), False if it is still blocked (left to die with the process)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:  # re-raised in the caller's thread
            raised.append(error)

    thread = threading.Thread(target=run, name="tensorboard-close", daemon=True)
    thread.start()
    thread.join(wait_s)
    if thread.is_alive():
        return False
    if raised:
        raise raised[0]
    return True


def clock(seconds: float) -> str:
    """A duration as m:ss, or h:mm:ss from an hour: 0:07, 9:05, 2:07:00."""
    minutes, secs = divmod(max(round(seconds), 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunLogger:
    """Appends one JSON object per meta-iteration to `DIR/metrics.jsonl`, mirrors scalars to
    TensorBoard (`DIR/tb`), and shows the progress: a bar with the current returns on a
    terminal, else one line per iteration. `adapts`: the run adapts (MAML: pre- and
    post-update returns); baselines show their one return."""

    def __init__(
        self,
        run_dir: str | Path,
        total: int,
        initial: int = 0,
        hparams: dict[str, Any] | None = None,
        progress: bool = True,
        tensorboard: bool = True,
        adapts: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.total, self.adapts = total, adapts
        self._started, self._initial = time.monotonic(), initial  # for the lines' ETA
        self._last = self._started
        self._paces: deque[float] = deque(maxlen=PACE_WINDOW)
        self._lines = not (progress and sys.stderr.isatty())
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=initial)
            if hparams and initial == 0:
                rows = "\n".join(f"|{k}|{v}|" for k, v in hparams.items())
                self._writer.add_text("hyperparameters", f"|key|value|\n|-|-|\n{rows}", 0)
        self._bar = tqdm(
            total=total,
            initial=initial,
            disable=self._lines,
            dynamic_ncols=True,
            desc="meta-iterations",
            unit="it",
        )

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        row = {"iteration": iteration, **metrics}
        try:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(row, allow_nan=True) + "\n")
                handle.flush()
        except OSError as error:  # a full disk: name the file (a handle's write does not)
            if error.filename is not None or error.errno is None:
                raise
            raise OSError(error.errno, error.strerror, str(self.metrics_path)) from error
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(key, value, iteration)
            self._finish_tensorboard(self._writer.flush)
        summary = self._summary(metrics)
        if self._lines:
            seconds = metrics.get("time/sampling_s", 0.0) + metrics.get("time/optimization_s", 0.0)
            words = "  ".join(f"{k} {v}" for k, v in summary.items())
            print(
                f"iteration {iteration + 1}/{self.total}  {words}  {seconds:.1f} s  "
                f"{self._elapsed_and_eta(iteration + 1)}",
                flush=True,
            )
        else:
            self._bar.set_postfix(summary)
            self._bar.update(1)

    def _elapsed_and_eta(self, done: int) -> str:
        """'elapsed 1:02  ETA 8:15': this call's wall time, and the remaining iterations at the
        median wall time of this call's last PACE_WINDOW iterations, so that one slow iteration
        (a paused process, a checkpoint on a slow disk) does not skew it for the rest of the
        run."""
        now = time.monotonic()
        self._paces.append(now - self._last)
        self._last = now
        pace = statistics.median(self._paces)
        return f"elapsed {clock(now - self._started)}  ETA {clock(pace * (self.total - done))}"

    def _summary(self, metrics: dict[str, float]) -> dict[str, str]:
        def value(key: str) -> str:
            return f"{metrics.get(key, float('nan')):.2f}"

        if not self.adapts:
            summary = {"return": value("returns/post_update")}
        else:
            summary = {
                "post-update": value("returns/post_update"),
                "pre-update": value("returns/pre_update"),
            }
        if "success/post_update" in metrics:
            summary["success"] = (
                f"{value('success/pre_update')}->{value('success/post_update')}"
                if self.adapts
                else value("success/post_update")
            )
        return summary

    def message(self, text: str) -> None:
        if self._lines:
            print(text, flush=True)
        else:
            self._bar.write(text)

    def _finish_tensorboard(self, call: Callable[[], object]) -> None:
        """`call` (the writer's flush or close), given up after TENSORBOARD_WAIT_S."""
        if not _bounded(call, TENSORBOARD_WAIT_S):
            self._writer = None
            self.message(
                f"TensorBoard did not finish writing within {TENSORBOARD_WAIT_S:g} s; its "
                f"events in {self.run_dir / 'tb'} may lack the last iterations "
                "(metrics.jsonl has them)"
            )

    def close(self) -> None:
        """Close the progress bar and the TensorBoard writer; never waits longer than
        TENSORBOARD_WAIT_S on the writer (Ctrl-C and SIGTERM end in bounded time)."""
        self._bar.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            self._finish_tensorboard(writer.close)


def _rows(path: Path, strict: bool) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("iteration"), int):
                raise ValueError("no iteration")
        except ValueError:
            if not strict:
                continue
            raise CheckpointError(
                f"{path} line {number} is not a metrics row (a write cut short?); "
                "`maml-rl train --resume` drops such lines, or delete it"
            ) from None
        rows.append(row)
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of `DIR/metrics.jsonl`; a torn or garbage line is a one-line CheckpointError."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return _rows(path, strict=True)


def truncate_metrics(run_dir: str | Path, last_iteration: int) -> None:
    """Keep the rows of iterations up to `last_iteration` (the checkpoint's): drops rows logged
    but not checkpointed and lines torn by a crash mid-write."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = _rows(path, strict=False) if path.exists() else []
    rows = [r for r in lines if r["iteration"] <= last_iteration]
    rows = list({r["iteration"]: r for r in rows}.values())  # a row written twice counts once
    artifacts.write_text(path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))
