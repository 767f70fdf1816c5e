"""What `maml-rl train` and `evaluate` say: a finished run asked to resume says it is complete
and how to extend it (instead of "iterations 2-1 of 1"); a run ends with its final and best
return, the wall time and the command to run next; an evaluation's table is headed by how many
iterations each method trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import maml_rl
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


def test_a_run_ends_with_its_final_and_best_return_wall_time_and_next_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    sets = [*TINY[1:], "num_batches=3"]
    assert main(["train", "navigation", "--out", str(run), "--no-progress", "--set", *sets]) == 0
    last_lines = capsys.readouterr().out.splitlines()[-3:]
    post = [row["returns/post_update"] for row in rows(run)]
    best = max(range(3), key=post.__getitem__)
    assert last_lines[0].startswith(f"run saved in {run} (this call: ")
    assert last_lines[0].endswith(" s)")
    assert last_lines[1] == (
        f"post-update return: final {post[-1]:.2f} (iteration 3), "
        f"best {post[best]:.2f} (iteration {best + 1})"
    )
    assert last_lines[2] == f"next: maml-rl evaluate {run}"
    oracle = tmp_path / "oracle"
    argv = ["train", "navigation", "--algo", "oracle", "--out", str(oracle), "--no-progress"]
    assert main([*argv, "--set", *TINY]) == 0
    last_lines = capsys.readouterr().out.splitlines()[-2:]
    assert last_lines[0].startswith("return: final ") and last_lines[1].endswith(f"plot {oracle}")


def test_durations_read_as_seconds_minutes_or_hours() -> None:
    from maml_rl.cli import _duration

    assert [_duration(s) for s in (4.25, 545, 7620)] == ["4.2 s", "9 min 05 s", "2 h 07 min"]


def test_evaluate_heads_its_table_with_each_methods_training_iterations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1-iteration oracle beside a 3-iteration MAML run is said to have trained less."""
    from maml_rl.cli import methods_line

    run = tmp_path / "run"
    sets = [*TINY[1:], "num_batches=3"]
    assert main(["train", "navigation", "--out", str(run), "--no-progress", "--set", *sets]) == 0
    argv = ["evaluate", str(run), "--num-tasks", "2", "--num-steps", "1", "--no-progress"]
    assert main([*argv, "--baselines", "random,oracle", "--train-baselines", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"training the oracle baseline for 1 iteration in {run / 'baselines' / 'oracle'}" in out
    header = out.index(next(line for line in out if line.startswith("method ")))
    assert out[header - 1] == (
        "trained iterations: maml 3, random none (an initialisation), oracle 1 (fewer than maml)"
    )
    assert methods_line({"maml": 500, "pretrained": 500, "oracle": None}) == (
        "trained iterations: maml 500, pretrained 500, oracle ?"
    )
    # the figure's legend says the same, and evaluation.json keeps it beside the protocol
    record = json.loads((run / "eval" / "evaluation.json").read_text())
    assert record["trained_iterations"] == {"maml": 3, "oracle": 1}
    from maml_rl.evaluation_files import legend_labels

    evaluation = maml_rl.evaluate(run, num_tasks=2, num_steps=1, baselines=["random"],
                                  progress=False)  # fmt: skip
    assert legend_labels(evaluation) == {"maml": "maml (3 iterations)",
                                         "random": "random (untrained)"}  # fmt: skip
    record = json.loads((run / "eval" / "evaluation.json").read_text())
    assert record["trained_iterations"] == {"maml": 3, "oracle": 1}  # oracle kept by the merge
