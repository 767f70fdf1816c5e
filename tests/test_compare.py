"""`maml-rl compare`: the paired per-task difference of two evaluations, and its refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from maml_rl.checkpoint import CheckpointError
from maml_rl.cli import main
from maml_rl.compare import load_evaluation, paired_difference
from maml_rl.evaluation_files import PROTOCOL, write_task_returns

PROTOCOL_A = {
    "env": "navigation",
    "checkpoint": "latest@9",
    "eval_seed": 0,
    "num_tasks": 5,
    "num_trajectories": 20,
    "step_sizes": [0.1],
}


def _evaluated(path: Path, returns: dict[str, np.ndarray], **protocol: object) -> Path:
    """An evaluation folder of `returns` (method -> [S + 1, 5]) under PROTOCOL_A's keys, with
    `protocol` on top."""
    (path / "eval").mkdir(parents=True)
    num_steps = next(iter(returns.values())).shape[0] - 1
    record = {**PROTOCOL_A, "num_steps": num_steps, **protocol}
    (path / "eval" / PROTOCOL).write_text(json.dumps(record))
    write_task_returns(returns, path / "eval" / "adaptation_tasks.csv")
    return path


def test_paired_difference_is_the_t_interval_of_the_per_task_differences(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shared = rng.normal(-20.0, 8.0, size=(2, 5))  # the task-to-task spread both runs share
    ra = shared + rng.normal(1.0, 0.5, size=(2, 5))
    rb = shared + rng.normal(0.0, 0.5, size=(2, 5))
    a = _evaluated(tmp_path / "a", {"maml": ra, "random": rb})
    # checkpoints and devices may differ
    b = _evaluated(tmp_path / "b", {"maml": rb}, checkpoint="best@3", ran_on={"maml": "cuda/f"})
    rows_a, rows_b, diff = paired_difference(load_evaluation(a), load_evaluation(b))
    for step in range(2):
        d = ra[step] - rb[step]
        half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
        assert diff[step].mean_return == pytest.approx(d.mean(), abs=1e-12)
        assert diff[step].ci95_high - diff[step].mean_return == pytest.approx(half, rel=1e-12)
        assert rows_a[step].mean_return == pytest.approx(ra[step].mean(), abs=1e-12)
        assert rows_b[step].mean_return == pytest.approx(rb[step].mean(), abs=1e-12)
        # pairing removes the shared spread: the difference's interval is far narrower
        assert diff[step].std_error < 0.5 * rows_a[step].std_error


def test_different_protocols_are_refused_naming_the_key(tmp_path: Path) -> None:
    returns = {"maml": np.zeros((2, 5))}
    a = load_evaluation(_evaluated(tmp_path / "a", returns))
    b = load_evaluation(_evaluated(tmp_path / "b", returns, eval_seed=1))
    with pytest.raises(CheckpointError, match="different eval_seed"):
        paired_difference(a, b)
    with pytest.raises(CheckpointError, match="no 'oracle' returns"):
        paired_difference(a, a, method="oracle")
    with pytest.raises(CheckpointError, match="no 'maml' success rates"):
        paired_difference(a, a, success=True)


def test_own_step_sizes_compare_adaptations_that_differ_only_in_their_step_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ra, rb = np.full((3, 5), -10.0), np.full((3, 5), -12.0)
    ra[:, 0], rb[:, 0] = -9.0, -11.0
    a = _evaluated(tmp_path / "a", {"maml": ra}, step_sizes=[0.1, 0.1])  # two trained steps
    b = _evaluated(tmp_path / "b", {"maml": rb}, step_sizes=[0.1, 0.05])
    with pytest.raises(CheckpointError, match=r"different step_sizes.*--own-step-sizes"):
        paired_difference(load_evaluation(a), load_evaluation(b))
    _, _, diff = paired_difference(load_evaluation(a), load_evaluation(b), own_step_sizes=True)
    assert [row.mean_return for row in diff] == pytest.approx([2.0] * 3, abs=1e-12)
    # the tasks must still be the same ones
    c = _evaluated(tmp_path / "c", {"maml": rb}, step_sizes=[0.1, 0.05], eval_seed=1)
    with pytest.raises(CheckpointError, match="different eval_seed"):
        paired_difference(load_evaluation(a), load_evaluation(c), own_step_sizes=True)
    assert main(["compare", str(a), str(b), "--own-step-sizes"]) == 0
    out = capsys.readouterr().out
    assert "step sizes [0.1, 0.1]" in out and "step sizes [0.1, 0.05]" in out


def test_success_rates_are_compared_when_both_evaluations_have_them(tmp_path: Path) -> None:
    from maml_rl.evaluation_files import write_task_returns

    runs = []
    for name, rates in (("a", [[0.5, 1.0, 0.0, 0.5, 1.0]]), ("b", [[0.0, 0.5, 0.0, 0.5, 0.5]])):
        run = _evaluated(tmp_path / name, {"maml": np.zeros((1, 5))})
        write_task_returns({"maml": np.array(rates)}, run / "eval" / "success_tasks.csv")
        runs.append(load_evaluation(run))
    a, b = runs
    _, _, diff = paired_difference(a, b, success=True)
    assert diff[0].mean_return == pytest.approx(0.3)


def test_cli_prints_the_rows_and_refuses_an_unevaluated_run_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ra, rb = np.full((2, 5), -10.0), np.full((2, 5), -12.0)
    ra[:, 0], rb[:, 0] = -9.0, -11.0  # a spread, so the interval is finite
    a = _evaluated(tmp_path / "a", {"maml": ra})
    b = _evaluated(tmp_path / "b", {"maml": rb})
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "A − B" in out and "2.00" in out and "same evaluation" not in out
    assert main(["compare", str(a), str(a / "eval")]) == 0  # one evaluation, named twice
    assert "note: A and B are the same evaluation" in capsys.readouterr().out
    assert main(["compare", str(a), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no evaluation" in err


def test_an_evaluation_folder_compares_like_the_run_directory_it_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`evaluate --out FOLDER` writes the evaluation outside the run: FOLDER is accepted."""
    ra, rb = np.full((2, 5), -10.0), np.full((2, 5), -12.0)
    ra[:, 0], rb[:, 0] = -9.0, -11.0
    a = _evaluated(tmp_path / "a", {"maml": ra})
    b = _evaluated(tmp_path / "b", {"maml": rb})
    moved = tmp_path / "b-evaluation"
    (b / "eval").rename(moved)
    assert load_evaluation(moved).returns["maml"].tolist() == rb.tolist()
    _, _, diff = paired_difference(load_evaluation(a), load_evaluation(moved))
    assert [row.mean_return for row in diff] == pytest.approx([2.0, 2.0], abs=1e-12)
    assert main(["compare", str(a / "eval"), str(moved)]) == 0
    assert "2.00" in capsys.readouterr().out


# --- the held-out tasks in the protocol (issue 38 item 6) ---

WIDER = "env_kwargs={max_episode_steps: 10, low: -2.0, high: 2.0}"
QUICK = ["--num-tasks", "2", "--num-steps", "1", "--no-progress"]


@pytest.fixture(scope="module")
def two_families(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny navigation runs, evaluated alike: one on the default goals, one on wider ones."""
    from test_artifacts import train

    root = tmp_path_factory.mktemp("families")
    default, wider = root / "default", root / "wider"
    assert train(default) == 0 and train(wider, "--set", WIDER) == 0
    assert main(["evaluate", str(default), *QUICK]) == 0
    assert main(["evaluate", str(wider), *QUICK]) == 0
    return default, wider


def test_runs_evaluated_on_other_env_kwargs_are_not_paired(
    two_families: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    default, wider = two_families
    capsys.readouterr()
    assert main(["compare", str(default), str(wider)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different env_kwargs" in err, err


def test_an_evaluation_saved_before_env_kwargs_still_merges_and_compares(
    two_families: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    default, wider = two_families
    old = tmp_path / "old"
    shutil.copytree(default, old, ignore=shutil.ignore_patterns(".lock"))
    record_path = old / "eval" / PROTOCOL
    record = json.loads(record_path.read_text())
    del record["env_kwargs"]  # as evaluations committed before it was recorded
    record_path.write_text(json.dumps(record))
    # compared on what it has, and on the run's own env_kwargs (config.yaml)
    assert main(["compare", str(old), str(default)]) == 0
    assert main(["compare", str(old), str(wider)]) == 2
    assert "different env_kwargs" in capsys.readouterr().err
    # a later evaluate keeps its methods (no set-aside) and records the key
    assert main(["evaluate", str(old), *QUICK, "--baselines", "random"]) == 0
    assert not (old / "eval" / "replaced").exists()
    recorded = json.loads(record_path.read_text())["env_kwargs"]
    assert recorded == json.loads((default / "eval" / PROTOCOL).read_text())["env_kwargs"]
    assert recorded["max_episode_steps"] == 10


def test_a_damaged_config_yaml_consulted_by_compare_is_one_line(
    two_families: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An evaluation without env_kwargs is compared on its run's config.yaml: a damaged one is
    named in one line, not a traceback, and not silently skipped."""
    import shutil

    default, _ = two_families
    old = tmp_path / "old"
    shutil.copytree(default, old, ignore=shutil.ignore_patterns(".lock"))
    record_path = old / "eval" / PROTOCOL
    record = json.loads(record_path.read_text())
    del record["env_kwargs"]
    record_path.write_text(json.dumps(record))
    for damaged in ("env: [navigation\n", "- a list\n", "\xff"):
        (old / "config.yaml").write_text(damaged, encoding="latin-1")
        capsys.readouterr()
        assert main(["compare", str(old), str(default)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert str(old / "config.yaml") in err and "restore or delete it" in err, err
    (old / "config.yaml").unlink()  # none at all: compared on the keys it has
    assert main(["compare", str(old), str(default)]) == 0
