"""Training through the CLI: smoke run, files written, resume equality, refusal, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from maml_rl import checkpoint
from maml_rl.cli import main
from maml_rl.logger import read_metrics

TINY = [
    "--set", "num_batches=2",
    "--set", "meta_batch_size=3",
    "--set", "fast_batch_size=2",
    "--set", "env_kwargs={max_episode_steps: 15}",
    "--set", "hidden_sizes=[16]",
    "--set", "cg_iters=3",
    "--no-progress",
]  # fmt: skip

REQUIRED = ("iteration", "returns/pre_update", "returns/post_update", "meta/surrogate_before",
            "meta/surrogate_after", "meta/kl_before", "meta/kl_after", "meta/line_search_steps",
            "meta/accepted", "time/sampling_s", "time/optimization_s", "env_steps")  # fmt: skip


def train(out: Path, *extra: str) -> int:
    return main(["train", "navigation", "--out", str(out), *TINY, *extra])


def test_smoke_one_run_writes_config_metrics_and_checkpoints(tmp_path: Path) -> None:
    assert train(tmp_path / "run") == 0
    run = tmp_path / "run"
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [0, 1]
    for row in rows:
        assert all(key in row for key in REQUIRED)
        assert -15 * 1.5 < row["returns/pre_update"] < 0  # H=15 steps, each reward in (-1.5, 0]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["meta_batch_size"] == 3 and config["env_kwargs"] == {
        "low": -0.5,
        "high": 0.5,
        "max_episode_steps": 15,
    }
    state = checkpoint.load(run / "checkpoint_latest.pt")
    assert state["iteration"] == 1
    # the exploration logged is that of the parameters the iteration ended with
    log_std = state["theta"]["log_std"]
    assert rows[-1]["policy/log_std_mean"] == pytest.approx(float(log_std.mean()))
    assert rows[-1]["policy/log_std_min"] == pytest.approx(float(log_std.min()))
    assert rows[0]["policy/log_std_mean"] != rows[1]["policy/log_std_mean"]
    assert (run / "checkpoint_best.pt").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())


def test_resume_reproduces_an_uninterrupted_run_row_by_row(tmp_path: Path) -> None:
    assert train(tmp_path / "full", "--set", "num_batches=4") == 0
    assert train(tmp_path / "split", "--set", "num_batches=2") == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--set", "num_batches=4",
                 "--no-progress"]) == 0  # fmt: skip
    full, split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert len(full) == len(split) == 4
    for a, b in zip(full, split, strict=True):
        a = {k: v for k, v in a.items() if not k.startswith("time/")}
        b = {k: v for k, v in b.items() if not k.startswith("time/")}
        assert a == b


def test_existing_run_directory_is_refused_without_resume_or_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(tmp_path / "run") == 0
    capsys.readouterr()
    assert train(tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run" in err and "\n" not in err
    assert train(tmp_path / "run", "--overwrite") == 0


@pytest.mark.skipif(sys.platform == "win32", reason="runs are locked with POSIX flock")
def test_a_directory_another_trainer_holds_is_refused_and_left_intact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fcntl

    run = tmp_path / "run"
    assert train(run) == 0
    before = (run / "metrics.jsonl").read_text()
    resume = ["train", "--resume", str(run), "--set", "num_batches=3", "--no-progress"]
    capsys.readouterr()
    with (run / ".lock").open("a") as other:  # a second open file: as another process would
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(resume) == 2
        err = capsys.readouterr().err.strip()
        expected = f"another process is training in {run}; wait for it to finish or stop it"
        assert err == f"maml-rl: error: {expected}"
        assert train(run, "--overwrite") == 2  # not even --overwrite clobbers a run in use
        assert "another process is training" in capsys.readouterr().err
        assert (run / "metrics.jsonl").read_text() == before
    assert main(resume) == 0  # the lock died with its holder
    assert [r["iteration"] for r in read_metrics(run)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "navigation", "--out", "X", "--set", "fast_lrr=0.1"], "did you mean 'fast_lr'"),
        (["train", "navigation", "--out", "X", "--set", "env=nowhere"], "unknown task family"),
        (["train", "navigation", "--out", "X", "--set", "max_kl=-1"], "max_kl"),
        (["train", "no-such-config", "--out", "X"], "no config named"),
        (["train", "missing.yaml", "--out", "X"], "config file not found"),
        (["train", "--resume", "nowhere"], "nothing to resume"),
        (["train", "navigation", "--out", "X", "--device", "cuda:7"], "cuda"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_metrics_are_valid_json_lines(tmp_path: Path) -> None:
    assert train(tmp_path / "run") == 0
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        assert isinstance(json.loads(line), dict)


def test_a_failed_start_leaves_no_directory_behind(tmp_path: Path) -> None:
    for argv in (["--device", "cuda:7"], ["--set", "env=no_such_module:Family"]):
        run = tmp_path / "run"
        assert train(run, *argv) == 2
        assert not run.exists(), argv
    kept = tmp_path / "kept"
    kept.mkdir()
    assert train(kept, "--device", "cuda:7") == 2
    assert kept.is_dir()  # a directory the user made is not removed


def test_overwrite_is_refused_while_a_baseline_trains_inside(tmp_path: Path) -> None:
    import fcntl

    run = tmp_path / "run"
    assert train(run) == 0
    baseline = run / "baselines" / "pretrained"
    baseline.mkdir(parents=True)
    (baseline / "metrics.jsonl").write_text('{"iteration": 0}\n')
    with (baseline / ".lock").open("a") as held:  # as evaluate --train-baselines holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert train(run, "--overwrite") == 2
    assert (baseline / "metrics.jsonl").read_text() == '{"iteration": 0}\n'
    assert (run / "metrics.jsonl").exists()
    assert train(run, "--overwrite") == 0  # once nothing trains inside, overwrite works
