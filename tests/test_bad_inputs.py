"""Bad inputs end in one line and exit 2, never a traceback, a hang or a silent guess (issue 38
item 11). Memory is fixed at 16 GiB so that the memory refusals do not depend on the machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_artifacts import LATEST, TINY, copy_run, trained  # noqa: F401 (a fixture)

from maml_rl import checkpoint
from maml_rl.cli import main


def _files(tmp: Path, run: Path) -> dict[str, str]:
    (tmp / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp / "twice.yaml").write_text("env: navigation\nfast_lr: 0.1\nfast_lr: 0.2\n")
    (tmp / "a_file").write_text("x")
    os.symlink(tmp / "nowhere", tmp / "dangling")
    (copy_run(run, tmp / "bad_config") / "config.yaml").write_text("algo: [maml\n")
    for name, change in [("wrong_shape", "shape"), ("missing", "missing")]:
        state = checkpoint.load(copy_run(run, tmp / name) / LATEST)
        key = next(iter(state["theta"]))
        if change == "shape":
            state["theta"][key] = torch.zeros(3, 3)
        else:
            del state["theta"][key]
        checkpoint.save_atomic(state, tmp / name / LATEST)
    return {"run": str(run), **{p.stem: str(p) for p in tmp.iterdir()}}


CASES = {
    "binary config": (["train", "{binary}", "--out", "{tmp}/o"], "is not UTF-8 text"),
    "yaml nested 5000 deep": (["train", "{deep}", "--out", "{tmp}/o"], "nested too deeply"),
    "torch_threads=100000": (["train", "navigation", "--out", "{tmp}/o", "--set",
                              "torch_threads=100000"], "'torch_threads' must be at most"),
    "--eval-seed 2**64": (["evaluate", "{run}", "--eval-seed", str(2**64)], "[0, 2**63)"),
    "--step-sizes 1e308": (["evaluate", "{run}", "--num-tasks", "2", "--step-sizes", "1e308"],
                           "non-finite"),
    "--num-steps 1e11": (["evaluate", "{run}", "--num-steps", "100000000000"], "GiB"),
    "--num-steps 1e6": (["evaluate", "{run}", "--num-steps", "1000000"], "GiB"),
    "--num-tasks 1e12": (["evaluate", "{run}", "--num-tasks", "1000000000000"], "GiB"),
    "--out an existing file": (["train", "navigation", "--out", "{a_file}"], "is a file"),
    "--out a dangling link": (["train", "navigation", "--out", "{dangling}"], "dangling"),
    "a failed start under a/b/c": (["train", "navigation", "--out", "{tmp}/a/b/c", "--set",
                                    "policy=no_such_module:Policy"], "no_such_module"),
    "duplicate keys in a config": (["train", "{twice}", "--out", "{tmp}/o"],
                                   "key 'fast_lr' is given twice (the second on line 3)"),
    "--set k=1 k=2": (["train", "navigation", "--out", "{tmp}/o", "--set", "fast_lr=1",
                       "fast_lr=2"], "gives fast_lr twice"),
    "a parameter of the wrong shape": (["evaluate", "{wrong_shape}", "--num-tasks", "2"],
                                       "has shape [3, 3]"),
    "a missing parameter": (["evaluate", "{missing}", "--num-tasks", "2"], "lacks parameter"),
    "resume a missing parameter": (["train", "--resume", "{missing}", "--set", "num_batches=3"],
                                   "lacks parameter"),
    "render --steps 0,1000000": (["render", "{run}", "--steps", "0,1000000"], "<= 1000"),
    "--step-sizes 0.1,,0.2": (["evaluate", "{run}", "--step-sizes", "0.1,,0.2"], "'0.1,,0.2'"),
    "plot a damaged config.yaml": (["plot", "{bad_config}"], "config.yaml cannot be read"),
    "--resume shorter": (["train", "--resume", "{run}", "--set", "num_batches=1"],
                         "num_batches=1 is fewer than the 2 iterations"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_one_line_and_exit_2(
    case: str,
    trained: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("maml_rl.memory.available_bytes", lambda: 16 * 2**30)
    run = copy_run(trained, tmp_path / "run")
    config_before = (run / "config.yaml").read_bytes()
    (tmp_path / "files").mkdir()
    names = {"tmp": str(tmp_path), **_files(tmp_path / "files", run)}
    argv, expected = CASES[case]
    argv = [word.format(**names) for word in argv]
    if argv[0] == "train" and "--resume" not in argv:
        argv += [*TINY]
    if argv[0] == "evaluate":
        argv += ["--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert (run / "config.yaml").read_bytes() == config_before  # never rewritten by a refusal
    assert not (tmp_path / "a").exists() and not (tmp_path / "o").exists()
