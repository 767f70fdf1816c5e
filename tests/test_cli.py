"""The command line as a user meets it: answers before heavy imports, several `--set` pairs per
flag, pytorch-maml-rl configs run unchanged (with one line saying what was mapped)."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maml_rl.cli import _overrides, main, parser
from maml_rl.logger import read_metrics

PROBE = """
import sys
from maml_rl.cli import main
for argv in (["--help"], ["--version"], ["train", "--help"], ["train", "--nonsense"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "gymnasium", "mujoco", "ray") if m in sys.modules))
"""
CLI = "import sys; from maml_rl.cli import main; sys.exit(main(sys.argv[1:]))"
"""The CLI as `maml-rl` runs it: a console script, whose sys.path lacks the working directory."""


def test_help_and_argument_errors_import_no_heavy_module() -> None:
    """`--help` and a bad argument must not wait for torch (about 4 s to import here)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_version_names_the_installed_versions_of_the_stack() -> None:
    from importlib import metadata

    import maml_rl

    done = subprocess.run(
        [sys.executable, "-c", CLI, "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"maml-rl {maml_rl.__version__} (Python {sys.version_info.major}.")
    for name in ("torch", "gymnasium", "mujoco", "numpy"):
        assert f"{name} {metadata.version(name)}" in line, line


def test_set_takes_several_pairs_per_flag() -> None:
    argv = ["train", "navigation", "--out", "x", "--set", "fast_lr=0.05", "num_batches=3"]
    args = parser().parse_args([*argv, "--set", "seed=4", "--seed", "5"])
    assert _overrides(args) == {"fast_lr": 0.05, "num_batches": 3, "seed": 5}
    (commands,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    train_help = commands.choices["train"].format_help()
    assert "--set fast_lr=0.05 num_batches=100" in " ".join(train_help.split())


def test_set_swallowing_the_config_says_how_to_fix_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--out", "x", "--set", "num_batches=1", "navigation"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "maml-rl: error: --set expects key=value, got 'navigation' (give the config before --set)"
    )


def test_a_pytorch_maml_rl_config_trains_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "env-name": "2DNavigation-v0",
        "env-kwargs": {"low": -0.5, "high": 0.5, "max_episode_steps": 8},
        "gamma": 0.99,
        "gae-lambda": 1.0,
        "first-order": False,
        "hidden-sizes": [8],
        "nonlinearity": "tanh",
        "fast-batch-size": 2,
        "num-steps": 1,
        "fast-lr": 0.1,
        "num-batches": 1,
        "meta-batch-size": 2,
        "max-kl": 1.0e-2,
        "cg-iters": 2,
        "cg-damping": 1.0e-5,
        "ls-max-steps": 15,
        "ls-backtrack-ratio": 0.8,
    }
    path = tmp_path / "2d-navigation.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("pytorch-maml-rl environment 2DNavigation-v0 runs as task family") == 1
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["env"] == "navigation" and saved["env_kwargs"]["max_episode_steps"] == 8


TINY = ["num_batches=2", "meta_batch_size=2", "fast_batch_size=2", "hidden_sizes=[8]"]


@pytest.mark.parametrize("algo", ["maml", "pretrained"])
def test_without_a_terminal_a_start_line_then_one_line_per_iteration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algo: str
) -> None:
    """No terminal (pytest captures stderr) or --no-progress: a start-up line naming the run,
    then one line per iteration; baselines show their one return, not pre/post."""
    argv = ["train", "navigation", "--out", str(tmp_path / algo), "--algo", algo, "--set", *TINY]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    start = lines[0]
    assert start.startswith(f"training {algo} on Navigation2D(")
    for part in (str(tmp_path / algo), "iterations 1-2 of 2", "2 tasks x 2 trajectories"):
        assert part in start
    assert "family check passed" in start and "sampler native (auto)" in start
    rows = [line for line in lines if line.startswith("iteration ")]
    assert [row.split()[1] for row in rows] == ["1/2", "2/2"]
    if algo == "maml":
        assert all("post-update" in row and "pre-update" in row for row in rows)
    else:
        assert all("  return " in row and "pre-update" not in row for row in rows)


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    building = importlib.import_module("maml_rl.build")  # where train's family check runs

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(building, "check_family", interrupt)
    argv = ["train", "navigation", "--out", str(tmp_path / "run"), "--set", *TINY]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == "maml-rl: interrupted" and "Traceback" not in err


def test_resume_refuses_structural_keys_and_negative_seeds_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", "navigation", "--out", str(run), "--set", *TINY]) == 0
    capsys.readouterr()
    cases = [
        (["--set", "algo=oracle"], "cannot change algo='oracle' (the run has 'maml')"),
        (["--set", "dtype=float64", "nonlinearity=relu"], "cannot change nonlinearity='relu'"),
        (["--set", "loss_weighting=steps"], "cannot change loss_weighting='steps'"),
        (["--seed", "3"], "cannot change seed=3 (the run has 0)"),
    ]
    for extra, expected in cases:
        assert main(["train", "--resume", str(run), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    # unchanged values and the resumable keys are fine
    assert main(["train", "--resume", str(run), "--set", "algo=maml", "num_batches=3"]) == 0
    capsys.readouterr()
    for argv in (
        ["train", "navigation", "--out", str(tmp_path / "neg"), "--seed", "-5"],
        ["evaluate", str(run), "--eval-seed", "-1"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "must be" in err and "seed" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("env", "kwargs", "expected"),
    [
        (
            "halfcheetah-vel",
            "{frame_skip: 0}",
            "frame_skip must be an integer in [1, 1,000,000], got 0",
        ),
        (
            "halfcheetah-dir",
            "{frame_skip: -1}",
            "frame_skip must be an integer in [1, 1,000,000], got -1",
        ),
        ("ant-vel", "{max_episode_steps: 2.5}", "max_episode_steps must be an integer"),
        ("navigation", "{max_episode_steps: 2.5}", "max_episode_steps must be an integer"),
        ("navigation", "{max_episode_steps: 1e9}", "got '1e9'"),
    ],
)
def test_out_of_range_env_kwargs_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: str, kwargs: str, expected: str
) -> None:
    argv = ["train", env, "--out", str(tmp_path / "run"), "--set", f"env_kwargs={kwargs}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_torch_threads_is_applied_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        argv = ["train", "navigation", "--out", str(tmp_path / "run"), "--set", *TINY]
        assert main([*argv, "torch_threads=1"]) == 0
        assert "torch threads 1" in capsys.readouterr().out.splitlines()[0]
        rows = read_metrics(tmp_path / "run")
        assert rows and all(row["time/torch_threads"] == 1 for row in rows)
        assert torch.get_num_threads() == 2  # the caller's setting, back after the run
    finally:
        torch.set_num_threads(before)


def test_check_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["check", "navigation"]) == 0
    assert capsys.readouterr().out.strip().endswith("all checks passed")
    assert main(["check", "halfcheetah-dir-promp"]) == 0  # a config: its family and kwargs
    assert "HalfCheetahDir(" in capsys.readouterr().out
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert main(["check", "test_checker:NaNRewardFamily"]) == 2
    err = capsys.readouterr().err.strip()
    expected = "task family NaNRewardFamily: step 4 of an episode returned the reward nan"
    assert err == f"maml-rl: error: {expected}"


@pytest.mark.parametrize(
    "setting",
    ["meta_batch_size=100000", "hidden_sizes=[100000,100000]", "fast_batch_size=10000000"],
)
def test_sizes_that_cannot_fit_are_refused_before_allocating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str
) -> None:
    out = tmp_path / "run"
    assert main(["train", "navigation", "--out", str(out), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert "GiB (estimate)" in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # a failed start leaves no directory


def test_a_module_class_run_is_evaluated_and_resumed_from_another_directory(
    tmp_path: Path,
) -> None:
    """The run records where its plug-in family was imported from (run.json and the
    checkpoint), so evaluation and resume need not run in the training directory."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "my_family.py").write_text(
        "from maml_rl_envs.navigation import Navigation2D\n\n\n"
        "class Mine(Navigation2D):\n    pass\n"
    )
    run = tmp_path / "run"

    def cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", CLI, *argv], cwd=cwd, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip

    tiny = [item for pair in (("--set", s) for s in TINY) for item in pair]
    done = cli("train", "navigation", "--out", str(run), "--set", "env=my_family:Mine", *tiny,
               "--no-progress", cwd=project)  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = yaml.safe_load((run / "run.json").read_text())
    assert record["import_root"] == str(project.resolve())
    assert record["sampler"] in {"native", "native (auto)"}
    done = cli("evaluate", str(run), "--num-tasks", "2", "--num-steps", "1", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    done = cli("train", "--resume", str(run), "--set", "num_batches=3", "--no-progress",
               cwd=elsewhere)  # fmt: skip
    assert done.returncode == 0, done.stderr


# --- argument mistakes: one line, exit 2 (argparse prints its usage first otherwise) ---

ARGUMENT_MISTAKES = {
    "missing run": (["evaluate"], "the following arguments are required: DIR"),
    "bad choice": (["train", "--algo", "x"], "argument --algo: invalid choice: 'x'"),
    "no command": (["nope"], "argument command: invalid choice: 'nope'"),
    "one run to compare": (["compare", "a"], "required: DIR_B"),
    "empty --out": (["train", "navigation", "--out", ""], "argument --out: an empty path"),
    "empty evaluate --out": (["evaluate", "run", "--out", " "], "argument --out: an empty path"),
    "empty plot --out": (["plot", "run", "--out", ""], "argument --out: an empty path"),
    "empty check": (["check", ""], "argument FAMILY_OR_CONFIG: an empty path"),
    "smooth 0": (["plot", "run", "--smooth", "0"], "argument --smooth: must be at least 1, got 0"),
    "stride -1": (["render", "run", "--stride", "-1"], "--stride: must be at least 1, got -1"),
    "no tasks": (["render", "run", "--num-tasks", "0"], "--num-tasks: must be at least 1"),
    "task -1": (["render", "run", "--task", "-1"], "--task: must be at least 0, got -1"),
    "task x": (["render", "run", "--task", "x"], "--task: must be an integer, got 'x'"),
    "no baseline iterations": (
        ["evaluate", "run", "--train-baselines", "0"],
        "--train-baselines: must be at least 1",
    ),
}


@pytest.mark.parametrize("case", ARGUMENT_MISTAKES)
def test_an_argument_mistake_is_one_line_naming_it_and_where_the_usage_is(
    case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, expected = ARGUMENT_MISTAKES[case]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "--help)" in err, err


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--out", "elsewhere"], "--out"),
        (["navigation"], "CONFIG"),
        (["--overwrite"], "--overwrite"),
    ],
)
def test_resume_refuses_the_arguments_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    assert main(["train", "--resume", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"leave out {named}" in err, err
    assert not (tmp_path / "elsewhere").exists()


def test_a_path_that_cannot_name_a_directory_is_a_users_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENAMETOOLONG, ENOTDIR: exit 2 (a mistake in the path given), not 1 (a machine failure)."""
    (tmp_path / "afile").write_text("")
    for out, code in (
        (tmp_path / ("q" * 300), "ENAMETOOLONG"),
        (tmp_path / "afile" / "sub", "ENOTDIR"),
    ):
        assert main(["train", "navigation", "--out", str(out), "--set", "num_batches=1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"({code})" in err, err
