"""What `maml-rl train` says at its end: a finished run asked to resume says it is complete and
how to extend it (instead of "iterations 2-1 of 1")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maml_rl.cli import main

TINY = ["num_batches=1", "meta_batch_size=2", "fast_batch_size=2", "hidden_sizes=[8]",
        "env_kwargs={max_episode_steps: 10}"]  # fmt: skip


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_of_a_finished_run_says_it_is_complete_and_how_to_extend_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", "navigation", "--out", str(run), "--no-progress", "--set", *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"the run in {run} is complete (1 of 1 iterations)" in out
    assert f"maml-rl train --resume {run} --set num_batches=2" in out
    assert "iterations 2-1" not in out and len(rows(run)) == 1
    assert main(["train", "--resume", str(run), "--no-progress", "--set", "num_batches=2"]) == 0
    assert len(rows(run)) == 2
