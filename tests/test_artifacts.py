"""Run artefacts: atomic writes, checksummed checkpoints, validated reads, run directories that a
crash cannot wedge, and a user's files that a run never mixes with or deletes (issue 38)."""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from maml_rl import artifacts, checkpoint
from maml_rl.cli import main
from maml_rl.errors import CheckpointError

TINY = [
    "--set", "num_batches=2",
    "--set", "meta_batch_size=2",
    "--set", "fast_batch_size=2",
    "--set", "env_kwargs={max_episode_steps: 10}",
    "--set", "hidden_sizes=[8]",
    "--set", "cg_iters=2",
    "--no-progress",
]  # fmt: skip
LATEST = "checkpoint_latest.pt"


def train(out: Path, *extra: str) -> int:
    return main(["train", "navigation", "--out", str(out), *TINY, *extra])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained navigation run (read it, or copy it before changing anything)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train(run) == 0
    return run


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


# --- the atomic writer ---


def test_a_failed_write_keeps_the_old_file_removes_its_temporary_and_says_one_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "evaluation.json"
    artifacts.write_text(path, "old\n")

    def disk_full(handle: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(artifacts.ArtifactError) as error:
        artifacts.write_with(path, disk_full)
    assert str(error.value).startswith(f"cannot write {path}: No space left on device")
    assert "\n" not in str(error.value)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation.json"]


def test_read_json_names_an_empty_or_cut_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "evaluation.json"
    for content in (b"", b'{"env": "navig', b"\xff\xfe"):
        path.write_bytes(content)
        with pytest.raises(artifacts.ArtifactError, match="cannot be read") as error:
            artifacts.read_json(path, "evaluate again")
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_lock_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """As in a read-only run directory (root ignores permissions: a missing folder stands in)."""
    with pytest.raises(artifacts.ArtifactError, match="cannot lock") as error:
        with artifacts.locked(tmp_path / "absent" / ".lock", "busy"):
            pass
    assert "\n" not in str(error.value)


# --- item 4: checksummed checkpoints, non-finite parameters refused on load ---


def test_a_flipped_bit_in_a_checkpoint_is_a_one_line_error_naming_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / LATEST
    state: dict[str, Any] = {"iteration": 3, "theta": {"w": torch.arange(50_000.0)},
                             "step_size": {}, "rng": {}, "config": {}}  # fmt: skip
    checkpoint.save_atomic(state, path)
    assert torch.equal(checkpoint.load(path)["theta"]["w"], state["theta"]["w"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04  # inside the tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum") as error:
        checkpoint.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_non_finite_parameters_are_refused_by_evaluate_render_and_resume(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(trained, tmp_path / "run")
    for name in (LATEST, "checkpoint_best.pt"):
        state = checkpoint.load(run / name)
        key = next(iter(state["theta"]))
        state["theta"][key] = torch.full_like(state["theta"][key], float("nan"))
        checkpoint.save_atomic(state, run / name)
    capsys.readouterr()
    png = tmp_path / "r.png"
    commands = (
        ["evaluate", str(run), "--num-tasks", "2", "--num-steps", "1"],
        ["render", str(run), "--steps", "0,1", "--eval-tasks", "2", "--out", str(png)],
        ["train", "--resume", str(run), "--set", "num_batches=4", "--no-progress"],
    )  # fmt: skip
    for argv in commands:
        assert main(argv) == 2, argv
        err = one_line_error(capsys)
        assert "non-finite parameters" in err and str(run / LATEST) in err, argv
    assert not png.exists()


def test_checkpoints_written_before_the_checksum_still_load() -> None:
    """The committed runs were written in format 1 (no checksum); read, never written."""
    root = Path(__file__).resolve().parent.parent / "experiments" / "results"
    found = sorted(root.glob("estimators/navigation-*/seed0/checkpoint_latest.pt"))
    if not found:
        pytest.skip("no committed results in this checkout")
    before = found[0].read_bytes()
    state = checkpoint.load(found[0])
    assert state["format"] == checkpoint.LEGACY_FORMAT and state["iteration"] >= 0
    assert all(torch.isfinite(p).all() for p in state["theta"].values())
    assert found[0].read_bytes() == before


RUN_CLI = "import sys; from maml_rl.cli import main; sys.exit(main(sys.argv[1:]))"


# --- item 7: a run killed at its first checkpoint's rename is started again, not wedged ---

KILL_AT_FIRST_RENAME_TO = textwrap.dedent(
    """
    import os, signal, sys
    real, target = os.replace, sys.argv.pop(1)
    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == target:
            os.kill(os.getpid(), signal.SIGKILL)  # as strace -e inject=rename:signal=KILL
        return real(src, dst, *args, **kwargs)
    os.replace = replace
    from maml_rl.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("target", ["run.json", LATEST])
def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    """SIGKILL at the rename of the run record (the run's first write) or of the first
    checkpoint: neither --resume nor --out may send the user to the other one."""
    run = tmp_path / "run"
    argv = ["train", "navigation", "--out", str(run), *TINY]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_RENAME_TO, target, *argv],
                            env=env, capture_output=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run / target).exists() and any(".tmp" in p.name for p in run.iterdir())
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "nothing to resume" in err
    if target == LATEST:
        assert "never completed an iteration" in err and f"--out {run}" in err
    if target == LATEST:  # a resume of a later run clears what a killed write left
        stale = run / ".checkpoint_best.pt.0123abcd.tmp.pt"
        copy_run(trained, tmp_path / "later")
        stale = tmp_path / "later" / stale.name
        stale.write_bytes(b"left by a killed write")
        resume = ["train", "--resume", str(tmp_path / "later"), "--set", "num_batches=3"]
        assert main([*resume, "--no-progress"]) == 0
        assert not stale.exists()
    assert train(run) == 0  # the failed start is reused, not "already holds a run"
    assert checkpoint.load(run / LATEST)["iteration"] == 1
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


# --- item 3: a user's folder is not a run directory; --overwrite deletes only run files ---


def test_a_non_empty_folder_without_a_run_is_refused_even_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "config.yaml").write_text("mine: true\n")
    for extra in ((), ("--overwrite",)):
        assert train(folder, *extra) == 2
        err = one_line_error(capsys)
        assert "is not empty and holds no maml_rl run" in err and "notes.txt" in err
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "notes.txt", "sub"]
    assert (folder / "config.yaml").read_text() == "mine: true\n"
    assert artifacts.is_run_entry(".run.json.0123abcd.tmp.json")
    assert not artifacts.is_run_entry("notes.txt.0123abcd.tmp")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(empty) == 0


def test_overwrite_deletes_only_the_run_files(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(trained, tmp_path / "run")
    (run / "notes.txt").write_text("my notes\n")
    (run / "mydata").mkdir()
    (run / "mydata" / "x.csv").write_text("1\n")
    (run / ".checkpoint_best.pt.0123abcd.tmp.pt").write_bytes(b"left by a killed write")
    assert train(run, "--overwrite", "--set", "num_batches=1") == 0
    assert (run / "notes.txt").read_text() == "my notes\n"
    assert (run / "mydata" / "x.csv").read_text() == "1\n"
    assert not (run / ".checkpoint_best.pt.0123abcd.tmp.pt").exists()
    assert checkpoint.load(run / LATEST)["iteration"] == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env_kwargs={bogus: 1}", "unexpected keyword argument 'bogus'"),
        ("policy=os:getcwd", "policy"),
        ("fast_batch_size=1000000000000", "memory"),
    ],
)
def test_an_overwrite_refused_for_its_config_leaves_the_old_run_as_it_was(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    """--overwrite replaces a run only once the new one has been built and checked: a mistake
    in the new config (family, policy, memory) loses nothing."""
    run = copy_run(trained, tmp_path / "run")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert train(run, "--overwrite", "--set", override) == 2
    assert message in one_line_error(capsys)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    after.pop(Path(".lock"), None)
    before.pop(Path(".lock"), None)
    assert after == before


# --- item 8: evaluation and render files are written atomically; a broken earlier evaluation
# is set aside (kept in eval/replaced/<n>/) with a one-line note, never a traceback or a wedge ---

EVALUATE = ["--num-tasks", "2", "--num-steps", "1", "--no-progress"]


def _edit_json(eval_dir: Path, drop: str) -> None:
    record = artifacts.read_json(eval_dir / "evaluation.json", "")
    del record[drop]
    (eval_dir / "evaluation.json").write_text(json.dumps(record))


def _edit_csv(eval_dir: Path, value: str) -> None:
    """The first per-task return replaced by `value`."""
    path = eval_dir / "adaptation_tasks.csv"
    header, first, *rest = path.read_text().splitlines()
    first = ",".join([*first.split(",")[:-1], value])
    path.write_text("\n".join([header, first, *rest]) + "\n")


@pytest.fixture
def evaluated(trained: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run, evaluated with maml and random on 2 tasks x 2 steps."""
    run = copy_run(trained, tmp_path / "run")
    assert main(["evaluate", str(run), *EVALUATE, "--baselines", "random"]) == 0
    return run


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda eval_dir: (eval_dir / "evaluation.json").write_text(""), id="empty-json"
        ),
        pytest.param(
            lambda eval_dir: (eval_dir / "adaptation_tasks.csv").write_bytes(
                (eval_dir / "adaptation_tasks.csv").read_bytes()[:60]
            ),
            id="cut-csv",
        ),
        # a record without the protocol's keys merged with anything (a missing key was read as
        # "saved before it was recorded"), and NaN or inf cells were read as returns
        pytest.param(
            lambda eval_dir: (eval_dir / "evaluation.json").write_text("{}"), id="emptied-json"
        ),
        pytest.param(lambda eval_dir: _edit_json(eval_dir, drop="env"), id="json-without-env"),
        pytest.param(lambda eval_dir: _edit_csv(eval_dir, "nan"), id="nan-in-csv"),
        pytest.param(lambda eval_dir: _edit_csv(eval_dir, "inf"), id="inf-in-csv"),
    ],
)
def test_a_broken_earlier_evaluation_is_set_aside_with_one_note(
    evaluated: Path, capsys: pytest.CaptureFixture[str], damage: object
) -> None:
    eval_dir = evaluated / "eval"
    damage(eval_dir)  # type: ignore[operator]
    broken = {p.name: p.read_bytes() for p in eval_dir.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["evaluate", str(evaluated), *EVALUATE]) == 0
    out, err = capsys.readouterr()
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "set the earlier evaluation aside" in notes[0]
    assert "Traceback" not in out + err
    assert str(eval_dir / "replaced" / "1") in notes[0]
    for name in ("evaluation.json", "adaptation_tasks.csv"):  # kept for inspection, as they were
        assert (eval_dir / "replaced" / "1" / name).read_bytes() == broken[name]
    assert artifacts.read_json(eval_dir / "evaluation.json", "")["num_tasks"] == 2
    assert main(["compare", str(evaluated), str(evaluated)]) == 0
    capsys.readouterr()
    damaged = copy_run(evaluated, evaluated.parent / "damaged")
    damage(damaged / "eval")  # type: ignore[operator]
    assert main(["compare", str(damaged), str(evaluated)]) == 2  # compare refuses it
    line = one_line_error(capsys)
    assert "damaged" in line and ("evaluation.json" in line or "adaptation_tasks.csv" in line)


def test_evaluation_and_figure_writes_killed_midway_leave_the_old_files(
    evaluated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    from maml_rl.evaluate import load_run

    eval_dir = evaluated / "eval"
    before = {p.name: p.read_bytes() for p in eval_dir.iterdir() if p.is_file()}

    def killed(self: Figure, target: object, **kwargs: object) -> None:
        Path(target).write_bytes(b"\x89PNG cut") if isinstance(target, str | Path) else (
            target.write(b"\x89PNG cut")  # type: ignore[attr-defined]
        )
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed)
    assert main(["evaluate", str(evaluated), *EVALUATE]) == 130  # Ctrl-C in the figure
    after = {p.name: p.read_bytes() for p in eval_dir.iterdir() if p.is_file()}
    assert after["adaptation.png"] == before["adaptation.png"]
    assert after["evaluation.json"] == before["evaluation.json"]  # the protocol is written last
    assert not [name for name in after if ".tmp" in name]
    stale = eval_dir / ".adaptation_tasks.csv.0123abcd.tmp.csv"  # left by a SIGKILL
    stale.write_bytes(b"cut")
    monkeypatch.undo()
    assert main(["evaluate", str(evaluated), *EVALUATE]) == 0
    assert not stale.exists()
    assert load_run(evaluated).iteration == 1


def test_a_render_killed_while_writing_leaves_no_cut_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imageio.v2 as imageio
    import numpy as np

    from maml_rl.render import _write_video

    def killed(target: object, frames: object, **kwargs: object) -> None:
        Path(str(target)).write_bytes(b"GIF89a cut")
        raise KeyboardInterrupt

    monkeypatch.setattr(imageio, "mimwrite", killed)
    out = tmp_path / "render" / "clip.gif"
    with pytest.raises(KeyboardInterrupt):
        _write_video([np.zeros((4, 4, 3), np.uint8)] * 3, out, 10)
    assert not out.exists() and list(out.parent.iterdir()) == []


# --- item 5: merged per-task rows must fill the protocol's (S + 1) x N ---


def test_an_edited_per_task_file_is_not_merged_but_set_aside(
    evaluated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from maml_rl.evaluation_files import read_task_returns

    path = evaluated / "eval" / "adaptation_tasks.csv"
    lines = path.read_text().splitlines(keepends=True)
    # drop random's rows of task 1: random still fills a smaller 2 x 1 rectangle
    path.write_text("".join(line for line in lines if not line.startswith("random,") or
                            not line.split(",")[2] == "1"))  # fmt: skip
    edited = path.read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(evaluated), *EVALUATE]) == 0
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "do not fill the protocol's 2 x 2" in note[0]
    (evaluated / "edited.csv").write_bytes(edited)
    with pytest.raises(artifacts.ArtifactError, match="2 x 2") as error:
        read_task_returns(evaluated / "edited.csv", (2, 2))
    assert "\n" not in str(error.value)
    merged = read_task_returns(path, (2, 2))
    assert set(merged) == {"maml"}  # the edited random rows are not carried over
    assert "random" in read_task_returns(evaluated / "eval" / "replaced" / "1" / path.name)


# --- items 2 and 1: evaluate holds DIR/eval's lock from loading the run to its last write ---


def test_evaluate_holds_its_lock_against_a_second_evaluate_and_an_overwrite(
    evaluated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluate_module = importlib.import_module("maml_rl.evaluate")  # the module, not the API's

    before = (evaluated / "eval" / "adaptation_tasks.csv").read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    original = evaluate_module.held_out
    inside: list[tuple[int, str]] = []

    def meanwhile(*args: object, **kwargs: object) -> object:
        if not inside:  # while the first evaluate computes: what another process would do
            second = subprocess.run(
                [sys.executable, "-c", RUN_CLI, "evaluate", str(evaluated), *EVALUATE],
                capture_output=True, text=True, timeout=300, env=env,
            )  # fmt: skip
            inside.append((second.returncode, second.stderr.strip()))
            capsys.readouterr()
            inside.append((train(evaluated, "--overwrite"), one_line_error(capsys)))
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "held_out", meanwhile)
    assert main(["evaluate", str(evaluated), *EVALUATE, "--baselines", "random"]) == 0
    (second, second_err), (overwrite, overwrite_err) = inside
    assert second == 2 and "another process is evaluating" in second_err
    assert len(second_err.splitlines()) == 1
    assert overwrite == 2 and f"cannot overwrite {evaluated}" in overwrite_err
    assert checkpoint.load(evaluated / LATEST)["iteration"] == 1  # the run was not replaced
    assert (evaluated / "eval" / "adaptation_tasks.csv").read_bytes() == before


def test_read_saved_config_is_none_without_one_and_one_line_when_damaged(tmp_path: Path) -> None:
    assert artifacts.read_saved_config(tmp_path) is None
    path = tmp_path / "config.yaml"
    path.write_text("env: navigation\nalgo: oracle\n")
    assert artifacts.read_saved_config(tmp_path) == {"env": "navigation", "algo": "oracle"}
    for content in (b"env: [navigation\n", b"- a list\n", b"\xff\xfe", b"", b"42\n"):
        path.write_bytes(content)
        with pytest.raises(artifacts.ArtifactError, match="restore or delete it") as error:
            artifacts.read_saved_config(tmp_path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
