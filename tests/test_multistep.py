"""experiments/multistep.py at tiny sizes: trains a variant, evaluates it and the 1-step
reference after 0..5 steps, pools them into MULTISTEP.md, and resumes without redoing work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import multistep
from maml_rl import api
from maml_rl.evaluate import SummaryRow
from maml_rl.evaluation_files import read_task_returns

TINY = {
    "num_batches": 1,
    "meta_batch_size": 2,
    "fast_batch_size": 2,
    "hidden_sizes": [8],
    "env_kwargs": {"max_episode_steps": 10},
}
TINY_SET = [
    "meta_batch_size=2",
    "fast_batch_size=2",
    "hidden_sizes=[8]",
    "env_kwargs={max_episode_steps: 10}",
]


def test_multistep_trains_evaluates_and_pools_against_the_one_step_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = tmp_path / "reference"
    cfg = api.load_config("navigation", **TINY)
    api.train(cfg, reference / "navigation" / "seed0", progress=False, tensorboard=False)
    out = tmp_path / "multistep"
    args = ["--variants", "steps2", "--seeds", "0", "--iterations", "1", "--num-tasks", "3"]
    args += ["--out", str(out), "--reference", str(reference), "--set", *TINY_SET]
    assert multistep.main(args) == 0
    first = capsys.readouterr().out
    # the reference's evaluation, the variant's training and its evaluation
    assert first.count("start  ") == 3

    run = out / "navigation" / "steps2-seed0"
    assert api.load_run(run).cfg.num_steps == 2
    returns = read_task_returns(run / "eval" / "adaptation_tasks.csv")
    assert returns["maml"].shape == (multistep.EVAL_STEPS + 1, 3)
    record = json.loads((run / "eval" / "multistep.json").read_text())
    assert (record["iteration"], record["num_steps"], record["num_tasks"]) == (0, 5, 3)
    table = (out / "MULTISTEP.md").read_text()
    assert "| steps1: mean | 0 |" in table and "| steps2: mean | 0 |" in table
    assert "| steps2 − steps1 (paired) |" in table

    assert multistep.main(args) == 0
    assert "start  " not in capsys.readouterr().out  # everything was done


def row(step: int, mean: float) -> SummaryRow:
    return SummaryRow("maml", step, mean, np.nan, np.nan, np.nan, 40)


def test_monotone_means_improvement_at_every_step_up_to_three() -> None:
    rising = [row(s, m) for s, m in enumerate([-40.0, -20.0, -15.0, -10.0, -30.0])]
    assert multistep.monotone(rising)  # step 4 does not count
    dipping = [row(s, m) for s, m in enumerate([-40.0, -12.0, -15.0, -10.0])]
    assert not multistep.monotone(dipping)


def test_unknown_variants_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        multistep.main(["--variants", "steps9"])
    assert "unknown variants ['steps9']" in capsys.readouterr().err
