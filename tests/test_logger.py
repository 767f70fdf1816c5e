"""The per-iteration lines (no terminal, or --no-progress) show the elapsed time and an ETA."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from maml_rl import logger
from maml_rl.logger import RunLogger, clock


def test_clock_reads_minutes_or_hours() -> None:
    assert [clock(s) for s in (7.4, 545, 7620, -1)] == ["0:07", "9:05", "2:07:00", "0:00"]


def test_iteration_lines_show_elapsed_time_and_eta_from_this_calls_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = [100.0]
    monkeypatch.setattr(logger, "time", SimpleNamespace(monotonic=lambda: now[0]))
    run = RunLogger(tmp_path, total=10, initial=4, progress=False, tensorboard=False)
    metrics = {"returns/pre_update": -3.0, "returns/post_update": -1.0}
    now[0] += 30.0  # iteration 5 (the first of this call) took 30 s: 5 left, 2:30
    run.log(4, metrics)
    now[0] += 10.0  # two in 40 s: 20 s each, 4 left
    run.log(5, metrics)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("iteration 5/10  post-update -1.00  pre-update -3.00")
    assert lines[0].endswith("elapsed 0:30  ETA 2:30")
    assert lines[1].endswith("elapsed 0:40  ETA 1:20")


def test_one_slow_iteration_does_not_skew_the_eta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run paused for 13 minutes (SIGSTOP) in one iteration: the ETA stays at the run's pace
    (a mean over the call said 9:41:35 for 180 iterations of 44 s, about 2:12:00)."""
    now = [0.0]
    monkeypatch.setattr(logger, "time", SimpleNamespace(monotonic=lambda: now[0]))
    run = RunLogger(tmp_path, total=100, progress=False, tensorboard=False)
    metrics = {"returns/pre_update": -3.0, "returns/post_update": -1.0}
    for iteration, seconds in enumerate((40.0, 40.0, 800.0, 40.0, 40.0)):
        now[0] += seconds
        run.log(iteration, metrics)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("elapsed 14:40  ETA 1:04:40")  # 97 left at the median 40 s
    assert lines[4].endswith("elapsed 16:00  ETA 1:03:20")  # 95 left at 40 s
