"""experiments/metaworld.py at tiny sizes: trains with a held-out success curve, evaluates with
the mean actions against pretrained and random, writes METAWORLD.md, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip(
    "metaworld", reason='Meta-World is not installed: pip install "maml-rl[metaworld]"'
)

from experiments import metaworld
from maml_rl import api
from maml_rl.evaluation_files import read_task_returns

TINY = {
    "num_batches": 3,
    "meta_batch_size": 2,
    "fast_batch_size": 2,
    "hidden_sizes": [8],
    "sampler": "sync",
    "env_kwargs": {"env_name": "reach-v3", "max_episode_steps": 10},
}


def test_a_run_gets_its_test_curve_final_evaluation_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = metaworld.Spec("metaworld-ml1-reach", curve_every=2, curve_tasks=2, eval_tasks=3,
                          pretrained=1)  # fmt: skip
    monkeypatch.setitem(metaworld.RUNS, "ml1-reach", spec)
    run = metaworld.train("ml1-reach", 0, tmp_path, **TINY)
    assert run == tmp_path / "ml1-reach" / "seed0"
    # points after iterations 1 (every 2) and 2 (the last), each after 0 and 1 steps
    points = sorted(p.name for p in (run / "test-curve").iterdir())
    assert points == ["iteration-1", "iteration-2"]
    for point in points:
        record = json.loads((run / "test-curve" / point / "evaluation.json").read_text())
        assert (record["actions"], record["num_steps"], record["num_tasks"]) == ("mean", 1, 2)
    metaworld.evaluate("ml1-reach", run)
    success = read_task_returns(run / "eval" / "success_tasks.csv")
    assert set(success) == {"maml", "pretrained", "random"}
    assert success["maml"].shape == (4, 3)
    assert json.loads((run / "eval" / "evaluation.json").read_text())["actions"] == "mean"
    assert api.load_run(run / "baselines" / "pretrained").iteration == 0  # 1 iteration

    table = metaworld.write_table(tmp_path).read_text()
    assert "## ml1-reach, seed 0" in table and "| 2 | " in table
    assert "maml − pretrained (paired)" in table

    # again: nothing retrained, nothing re-evaluated
    stamp = (run / "checkpoint_latest.pt").stat().st_mtime_ns
    assert metaworld.train("ml1-reach", 0, tmp_path, **TINY) == run
    metaworld.evaluate("ml1-reach", run)
    assert (run / "checkpoint_latest.pt").stat().st_mtime_ns == stamp
    assert not (run / "eval" / "replaced").exists()
