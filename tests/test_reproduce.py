"""experiments/reproduce.py end to end at a tiny size: training, shared baselines, evaluation,
the pooled table; a second invocation finds everything done; a longer plan resumes."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from maml_rl import checkpoint

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "reproduce.py"
TINY = [
    "meta_batch_size=2",
    "fast_batch_size=2",
    "hidden_sizes=[8]",
    "env_kwargs={max_episode_steps: 10}",
]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_reproduce_trains_evaluates_pools_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reproduce = load_script()
    args = [
        "--tasks",
        "navigation",
        "--seeds",
        "0",
        "1",
        "--num-tasks",
        "3",
        "--out",
        str(tmp_path),
    ]
    assert reproduce.main([*args, "--iterations", "navigation=1:1", "--set", *TINY]) == 0
    first = capsys.readouterr().out
    assert first.count("start  ") == 2 + 2 + 2  # MAML x 2 seeds, 2 shared baselines, 2 evaluations
    assert "navigation/seed1/pretrained" not in first  # baselines trained once, for seed 0

    task = tmp_path / "navigation"
    with (task / "adaptation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == {"maml", "pretrained", "random", "oracle"}
    assert {int(r["num_tasks"]) for r in rows} == {2 * 3}  # pooled over both seeds
    assert (task / "adaptation.png").stat().st_size > 0 and (task / "training.png").exists()
    results = (tmp_path / "RESULTS.md").read_text()
    assert (
        "### navigation" in results and "| maml |" in results and "| MAML, seed1 | 1 |" in results
    )
    record = json.loads((task / "seed1" / "eval" / "reproduce.json").read_text())
    assert (record["iteration"], record["baseline_iterations"], record["seed"]) == (0, 1, 0)
    assert "| evaluation, per seed | | | " in results

    assert reproduce.main([*args, "--iterations", "navigation=1:1"]) == 0
    assert "start  " not in capsys.readouterr().out  # everything was done

    assert reproduce.main([*args, "--seeds", "0", "--iterations", "navigation=2:1"]) == 0
    again = capsys.readouterr().out
    assert "train --resume" in again and again.count("start  ") == 2  # MAML seed 0, its evaluation
    assert checkpoint.load(task / "seed0" / "checkpoint_latest.pt")["iteration"] == 1
    assert json.loads((task / "seed0" / "eval" / "reproduce.json").read_text())["iteration"] == 1

    # the oracle alone extended (TASK=N:B:O): it resumes, the pretrained policy is left as it is
    assert reproduce.main([*args, "--seeds", "0", "--iterations", "navigation=2:1:2"]) == 0
    again = capsys.readouterr().out
    assert again.count("start  ") == 2 and "seed0/oracle: maml-rl train --resume" in again
    baselines = task / "seed0" / "baselines"
    assert checkpoint.load(baselines / "oracle" / "checkpoint_latest.pt")["iteration"] == 1
    assert checkpoint.load(baselines / "pretrained" / "checkpoint_latest.pt")["iteration"] == 0
    record = json.loads((task / "seed0" / "eval" / "reproduce.json").read_text())
    assert record["baseline_iterations"] == {"pretrained": 1, "oracle": 2}

    # one evaluated seed: its evaluation time is one figure, not "per seed" nor "X to X"
    (task / "seed1" / "eval" / "reproduce.json").unlink()
    results = reproduce.write_tables(tmp_path).read_text()
    evaluation = next(line for line in results.splitlines() if line.startswith("| evaluation"))
    assert evaluation.startswith("| evaluation | | | ") and " to " not in evaluation


def test_a_failing_step_is_one_line_naming_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reproduce = load_script()
    argv = ["--tasks", "navigation", "--seeds", "0", "--out", str(tmp_path), "--set", "fast_lr=-1"]
    assert reproduce.main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: navigation/seed0/maml failed (exit 2); see ")
    assert "fast_lr" in Path(error.rsplit("see ", 1)[1]).read_text()


@pytest.mark.parametrize(
    "item", ["navigation=lots", "navigation=0", "navigation=5:0", "navigation=1:2:3:4", "moon=5"]
)
def test_bad_iterations_are_a_usage_error(item: str, capsys: pytest.CaptureFixture[str]) -> None:
    reproduce = load_script()
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--iterations", item])
    assert stop.value.code == 2
    assert "--iterations expects TASK=N" in capsys.readouterr().err


def test_iterations_set_maml_pretrained_and_oracle_counts() -> None:
    reproduce = load_script()
    args = reproduce.parse_args(["--full", "--iterations", "ant-vel=500:300", "navigation=9:8:7"])
    assert args.iterations["ant-vel"] == (500, {"pretrained": 300, "oracle": 300})
    assert args.iterations["navigation"] == (9, {"pretrained": 8, "oracle": 7})
    assert args.iterations["halfcheetah-dir"] == (500, {"pretrained": 500, "oracle": 500})
    assert reproduce.baseline_record({"pretrained": 500, "oracle": 500}) == 500


def test_a_corrupt_checkpoint_or_nothing_to_tabulate_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reproduce = load_script()
    assert reproduce.main(["--stage", "table", "--out", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err.strip() == f"error: nothing has been evaluated under {tmp_path} yet"
    )
    run = tmp_path / "navigation" / "seed0"
    run.mkdir(parents=True)
    (run / "checkpoint_latest.pt").write_bytes(b"not a checkpoint")
    assert reproduce.main(["--tasks", "navigation", "--seeds", "0", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "checkpoint_latest.pt" in error and "\n" not in error
