"""Run logging: `metrics.jsonl`, TensorBoard events and a progress bar. The only module that prints.

Metric names are `group/name` (`returns/pre_update`, `meta/kl_after`, `time/sampling_s`).
On a terminal the progress is a labelled bar; without one (a log file, `nohup`, CI) or with
`progress=False` it is one line per meta-iteration.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from maml_rl import artifacts
from maml_rl.errors import CheckpointError

# The training returns every run logs per meta-iteration (a baseline logs pre == post).
PRE_UPDATE, POST_UPDATE = "returns/pre_update", "returns/post_update"


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
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row, allow_nan=True) + "\n")
            handle.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(key, value, iteration)
            self._writer.flush()
        summary = self._summary(metrics)
        if self._lines:
            seconds = metrics.get("time/sampling_s", 0.0) + metrics.get("time/optimization_s", 0.0)
            words = "  ".join(f"{k} {v}" for k, v in summary.items())
            print(f"iteration {iteration + 1}/{self.total}  {words}  {seconds:.1f} s", flush=True)
        else:
            self._bar.set_postfix(summary)
            self._bar.update(1)

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

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.close()


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
