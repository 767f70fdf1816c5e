"""Run logging: `metrics.jsonl`, TensorBoard events and a progress bar. The only module that prints.

Metric names are `group/name` (`returns/pre_update`, `meta/kl_after`, `time/sampling_s`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLogger:
    """Appends one JSON object per meta-iteration to `DIR/metrics.jsonl`, mirrors scalars to
    TensorBoard (`DIR/tb`), and shows a progress bar with the current returns."""

    def __init__(
        self,
        run_dir: str | Path,
        total: int,
        initial: int = 0,
        hparams: dict[str, Any] | None = None,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=initial)
            if hparams and initial == 0:
                rows = "\n".join(f"|{k}|{v}|" for k, v in hparams.items())
                self._writer.add_text("hyperparameters", f"|key|value|\n|-|-|\n{rows}", 0)
        self._bar = tqdm(total=total, initial=initial, disable=not progress, dynamic_ncols=True)

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
        self._bar.set_postfix(
            pre=f"{metrics.get('returns/pre_update', float('nan')):.2f}",
            post=f"{metrics.get('returns/post_update', float('nan')):.2f}",
        )
        self._bar.update(1)

    def message(self, text: str) -> None:
        self._bar.write(text)

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of `DIR/metrics.jsonl`."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, last_iteration: int) -> None:
    """Drop rows after `last_iteration` (an iteration logged but not checkpointed)."""
    rows = [r for r in read_metrics(run_dir) if r["iteration"] <= last_iteration]
    path = Path(run_dir) / "metrics.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))
    tmp.replace(path)
