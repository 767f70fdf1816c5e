"""experiments/extend.py: the relative gain and the stopping rule against hand-computed values,
and, at tiny sizes, an extension that copies a run, trains it on in chunks, evaluates it on the
source's tasks, and resumes without redoing work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments import extend
from maml_rl import api
from maml_rl.evaluation_files import read_task_returns
from maml_rl.train import LATEST


def test_relative_gain_is_the_last_chunk_over_the_one_before() -> None:
    # chunks [1, 3] (mean 2) then [4, 6] (mean 5): (5 - 2) / 2
    assert extend.relative_gain([0.0, 1.0, 3.0, 4.0, 6.0], 2) == pytest.approx(1.5, abs=1e-15)
    # negative returns: -10 -> -8 is a gain of 2 / 10
    assert extend.relative_gain([-10.0, -10.0, -8.0, -8.0], 2) == pytest.approx(0.2, abs=1e-15)
    assert extend.relative_gain([-8.0, -10.0], 1) == pytest.approx(-0.25, abs=1e-15)
    assert math.isnan(extend.relative_gain([1.0, 2.0, 3.0], 2))  # fewer than 2 chunks
    assert extend.relative_gain([0.0, 0.0], 1) == 0.0
    assert extend.relative_gain([0.0, -1.0], 1) == -math.inf


def test_decide_trains_at_least_one_chunk_then_stops_when_flat_or_at_the_cap() -> None:
    # at the source's iterations a flat curve still gets one chunk
    assert extend.decide(500, 500, 0.0, 100, 0.02, 2000).target == 600
    assert extend.decide(600, 500, 0.05, 100, 0.02, 2000).target == 700
    stop = extend.decide(700, 500, 0.019, 100, 0.02, 2000)
    assert stop.target is None and "+1.9%" in stop.reason
    assert extend.decide(1950, 500, 0.5, 100, 0.02, 2000).target == 2000  # capped
    assert extend.decide(2000, 500, 0.5, 100, 0.02, 2000).target is None
    assert extend.decide(600, 500, math.nan, 100, 0.02, 2000).target == 700  # NaN is not < 2 %


def test_decide_finishes_an_interrupted_chunk_at_its_own_end() -> None:
    # A run stopped at 602 during the chunk 600-699 resumes to 700, not 702, and is not
    # judged on a window that straddles two chunks (even when that window looks flat).
    assert extend.decide(602, 500, 0.0, 100, 0.02, 2000).target == 700
    assert extend.decide(501, 500, -1.0, 100, 0.02, 2000).target == 600
    assert extend.decide(1990, 500, 0.0, 100, 0.02, 1995).target == 1995  # still capped


TINY = {
    "num_batches": 2,
    "meta_batch_size": 2,
    "fast_batch_size": 2,
    "hidden_sizes": [8],
    "env_kwargs": {"max_episode_steps": 10},
}


def test_extension_copies_trains_in_chunks_evaluates_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    api.train(api.load_config("navigation", **TINY), source, progress=False, tensorboard=False)
    before = (source / LATEST).read_bytes()
    out = tmp_path / "extended"
    args = [str(source), "--out", str(out), "--chunk", "1", "--min-gain=-1e9"]
    args += ["--max-iterations", "4", "--num-tasks", "3"]
    assert extend.main(args) == 0
    first = capsys.readouterr().out
    assert first.count("start  ") == 3  # iterations 3 and 4, then the evaluation
    assert (source / LATEST).read_bytes() == before  # the source is left as it was
    assert json.loads((out / "extend.json").read_text())["source_iterations"] == 2
    assert extend.iterations_done(out) == 4
    assert len(extend.post_update_returns(out)) == 4  # the source's rows, then the new ones
    returns = read_task_returns(out / "eval" / "adaptation_tasks.csv")
    assert set(returns) == {"maml", "random"} and returns["maml"].shape[1] == 3
    summary = (out / "EXTEND.md").read_text()
    assert "reached --max-iterations 4" in summary
    assert "| 3–3 | " in summary and "| maml at 4 |" in summary

    assert extend.main(args) == 0
    assert "start  " not in capsys.readouterr().out  # everything was done


def test_extension_refuses_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert extend.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "is not a run" in error and error.count("\n") == 1
