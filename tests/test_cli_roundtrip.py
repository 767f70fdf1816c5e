"""The researcher's day through the CLI on tiny 2D navigation: train → evaluate against all
three baselines (trained on request) → plot; an interrupted run; one-line errors."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import matplotlib.image
import pytest

from maml_rl import checkpoint
from maml_rl.cli import main
from maml_rl.evaluate import COLUMNS
from maml_rl.logger import read_metrics

training = importlib.import_module("maml_rl.train")  # maml_rl.train: the API function
LATEST_NAME = "checkpoint_latest.pt"
TINY = [
    "--set", "meta_batch_size=2",
    "--set", "fast_batch_size=2",
    "--set", "env_kwargs={max_episode_steps: 10}",
    "--set", "hidden_sizes=[16]",
    "--set", "cg_iters=3",
    "--no-progress",
]  # fmt: skip


def train(out: Path, num_batches: int = 2, *extra: str) -> int:
    args = ["train", "navigation", "--out", str(out), "--set", f"num_batches={num_batches}"]
    return main([*args, *TINY, *extra])


def assert_png(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0  # not a blank canvas


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_train_evaluate_plot_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert train(run) == 0
    evaluate = ["evaluate", str(run), "--num-steps", "2", "--num-tasks", "3", "--no-progress"]
    argv = [*evaluate, "--baselines", "pretrained,random,oracle", "--train-baselines", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "training the pretrained baseline" in out and "training the oracle baseline" in out
    assert "mean return" in out and "oracle" in out

    for name in ("pretrained", "oracle"):
        state = checkpoint.load(run / "baselines" / name / "checkpoint_latest.pt")
        assert state["iteration"] == 1 and state["config"]["algo"] == name
    with (run / "eval" / "adaptation.csv").open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames is not None and tuple(reader.fieldnames) == COLUMNS
    assert len(rows) == 4 * 3  # 4 methods × steps 0..2
    assert [r["method"] for r in rows[::3]] == ["maml", "pretrained", "random", "oracle"]
    assert [int(r["step"]) for r in rows] == [0, 1, 2] * 4
    assert all(int(r["num_tasks"]) == 3 for r in rows)
    assert all(float(r["ci95_low"]) <= float(r["mean_return"]) <= float(r["ci95_high"])
               for r in rows)  # fmt: skip
    assert_png(run / "eval" / "adaptation.png")

    # the baselines are found where they were trained; more iterations resume them
    assert main([*evaluate, "--baselines", "pretrained,oracle", "--checkpoint", "best"]) == 0
    assert main([*evaluate, "--baselines", "pretrained", "--train-baselines", "3"]) == 0
    assert [r["iteration"] for r in read_metrics(run / "baselines" / "pretrained")] == [0, 1, 2]

    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    assert_png(run / "training.png")
    runs = [str(run), str(run / "baselines" / "pretrained"), str(run / "baselines" / "oracle")]
    assert main(["plot", *runs, "--out", str(tmp_path / "all.png")]) == 0
    assert_png(tmp_path / "all.png")
    assert "wrote" in capsys.readouterr().out


def test_an_interrupted_run_leaves_a_loadable_checkpoint_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = training.meta_step
    calls = []

    def interrupt_on_iteration_2(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:  # iterations 0 and 1 complete, Ctrl-C during iteration 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "meta_step", interrupt_on_iteration_2)
    assert train(tmp_path / "run", 3) == 130  # Ctrl-C: exit 130, saying what was saved
    err = capsys.readouterr().err.strip()
    assert err == (
        f"maml-rl: interrupted; 2 iterations are saved in {tmp_path / 'run' / LATEST_NAME}"
        f"; resume with: maml-rl train --resume {tmp_path / 'run'}"
    )
    state = checkpoint.load(tmp_path / "run" / "checkpoint_latest.pt")
    assert state["iteration"] == 1
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == [0, 1]

    monkeypatch.setattr(training, "meta_step", original)
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0
    assert checkpoint.load(tmp_path / "run" / "checkpoint_latest.pt")["iteration"] == 2
    assert train(tmp_path / "uninterrupted", 3) == 0
    resumed, full = read_metrics(tmp_path / "run"), read_metrics(tmp_path / "uninterrupted")
    assert without_timings(resumed) == without_timings(full)


def test_bad_requests_get_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    trained_run = tmp_path / "run"
    assert train(trained_run, 1) == 0
    other = tmp_path / "other"
    assert train(other, 1, "--algo", "oracle", "--set", "env_kwargs={max_episode_steps: 12}") == 0
    (tmp_path / "empty").mkdir()
    run = str(trained_run)
    cases = [
        (["evaluate", run, "--baselines", "pretrained"], "--pretrained DIR, or --train-baselines"),
        (["evaluate", str(tmp_path / "nowhere")], "run directory not found"),
        (["evaluate", str(tmp_path / "empty")], "checkpoint not found"),
        (["evaluate", run, "--baselines", "expert"], "unknown baseline 'expert'"),
        (["evaluate", run, "--step-sizes", "0.1,abc"], "--step-sizes"),
        (["evaluate", run, "--num-tasks", "0"], "--num-tasks >= 1"),
        (["evaluate", run, "--pretrained", run], "is an algo=maml run, expected algo=pretrained"),
        (["evaluate", run, "--oracle", str(other)], "was trained on navigation"),
        (["evaluate", str(other)], "evaluate a MAML run"),
        (["plot", run, run], "needs --out FILE"),
        (["plot", str(tmp_path / "nowhere")], "run directory not found"),
        # a run's file given for its directory; a directory given for a config file
        (["evaluate", f"{run}/checkpoint_latest.pt"], "is a file, not a run directory"),
        (["plot", f"{run}/metrics.jsonl"], "is a file, not a run directory"),
        (["render", f"{run}/config.yaml"], "is a file, not a run directory"),
        (["check", run], "is a directory, not a config file"),
    ]
    capsys.readouterr()
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err, (argv, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (trained_run / "eval").exists() and not (trained_run / "baselines").exists()

    # Ctrl-C while a baseline trains: stop with a hint, evaluate nothing
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "meta_step", interrupt)
    argv = ["evaluate", run, "--baselines", "pretrained", "--train-baselines", "2", "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    baseline = trained_run / "baselines" / "pretrained"
    assert err == (
        f"maml-rl: interrupted before any iteration completed; nothing was saved in {baseline}"
    )
    assert not (trained_run / "eval").exists()
