"""Pooling evaluations of several seeds: per-task returns on disk, the pooled interval by hand,
the Markdown table and the cost of a run read from its metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from maml_rl.checkpoint import CheckpointError
from maml_rl.evaluation_files import read_task_returns, write_task_returns
from maml_rl.results import (
    late_gain,
    markdown_table,
    median_rows,
    paired_rows,
    pool,
    pooled_rows,
    run_cost,
)


def test_per_task_returns_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    returns = {"maml": rng.normal(size=(4, 5)), "oracle": rng.normal(size=(4, 5))}
    write_task_returns(returns, tmp_path / "tasks.csv")
    back = read_task_returns(tmp_path / "tasks.csv")
    assert list(back) == ["maml", "oracle"]
    for name, values in returns.items():
        np.testing.assert_array_equal(back[name], values)  # repr of a float64 is exact


def test_reading_a_missing_or_foreign_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no per-task returns"):
        read_task_returns(tmp_path / "absent.csv")
    (tmp_path / "other.csv").write_text("method,step,mean_return\nmaml,0,1.0\n")
    with pytest.raises(CheckpointError, match="not a per-task returns file"):
        read_task_returns(tmp_path / "other.csv")
    (tmp_path / "bad.csv").write_text("method,step,task,mean_return\nmaml,0,0,abc\n")
    with pytest.raises(CheckpointError, match="line 2: malformed row"):
        read_task_returns(tmp_path / "bad.csv")
    (tmp_path / "holes.csv").write_text("method,step,task,mean_return\nmaml,1,1,1.0\n")
    with pytest.raises(CheckpointError, match="do not fill"):
        read_task_returns(tmp_path / "holes.csv")


def test_pooled_interval_is_the_t_interval_over_all_tasks_of_all_seeds() -> None:
    seed_a = {"maml": np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 8.0]]), "random": np.zeros((2, 3))}
    seed_b = {"maml": np.array([[5.0, 9.0], [0.0, 2.0]])}
    pooled = pool([seed_a, seed_b])
    assert list(pooled) == ["maml"]  # random is not in every evaluation
    rows = pooled_rows([seed_a, seed_b])
    values = [1.0, 2.0, 3.0, 5.0, 9.0]  # step 0 over the 5 tasks
    mean = sum(values) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    half = stats.t.ppf(0.975, 4) * std / math.sqrt(5)
    assert rows[0].step == 0 and rows[0].num_tasks == 5
    assert rows[0].mean_return == pytest.approx(mean, rel=1e-12)
    assert rows[0].ci95_high - rows[0].mean_return == pytest.approx(half, rel=1e-12)
    assert rows[1].mean_return == pytest.approx(4.0, rel=1e-12)  # (4 + 6 + 8 + 0 + 2) / 5


def test_pooling_refuses_different_numbers_of_steps() -> None:
    with pytest.raises(ValueError, match="different numbers of gradient steps"):
        pool([{"maml": np.zeros((2, 3))}, {"maml": np.zeros((4, 3))}])
    with pytest.raises(ValueError, match="nothing to pool"):
        pool([])


def test_markdown_table_orders_methods_and_adds_the_paper_where_known() -> None:
    evaluation = {
        "oracle": np.full((4, 2), -60.0),
        "maml": np.array([[-130.0, -120.0], [-80.0, -70.0], [-70.0, -60.0], [-65.0, -55.0]]),
    }
    table = markdown_table("halfcheetah-vel", pooled_rows([evaluation])).splitlines()
    assert table[0] == (
        "| method | 0 steps | 1 step | 2 steps | 3 steps | paper (0 / 1 / 2 / 3 steps, H = 200) |"
    )
    half = stats.t.ppf(0.975, 1) * 5.0  # two tasks 10 apart: SE = 5
    assert table[2] == (
        f"| maml | -125.0 ± {half:.1f} | -75.0 ± {half:.1f} | -65.0 ± {half:.1f} | "
        f"-60.0 ± {half:.1f} | -130 / -75 / – / -60 to -70 |"
    )
    assert table[3].startswith("| oracle | -60.0 ± 0.0 |") and table[3].endswith(
        "| -60 / -60 / -60 / -60 |"
    )
    plain = markdown_table("navigation", pooled_rows([evaluation])).splitlines()
    assert "paper" not in plain[0] and plain[2].count("|") == 6


def test_run_cost_sums_sampling_and_optimisation_time(tmp_path: Path) -> None:
    rows = [
        {
            "iteration": i,
            "env_steps": 100.0 * (i + 1),
            "time/sampling_s": 1.5,
            "time/optimization_s": 2.0,
        }
        for i in range(3)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cost = run_cost(tmp_path)
    assert (cost.iterations, cost.env_steps, cost.wall_s) == (3, 300, pytest.approx(10.5))
    assert math.isnan(cost.late_gain)  # no training returns logged
    with pytest.raises(CheckpointError, match="no metrics"):
        run_cost(tmp_path / "empty")


def test_paired_rows_are_the_t_interval_of_per_task_differences() -> None:
    seed_a = {"maml": np.array([[1.0, 5.0]]), "pretrained": np.array([[0.0, 3.0]])}
    seed_b = {"maml": np.array([[10.0]]), "pretrained": np.array([[6.0]])}
    (row,) = paired_rows([seed_a, seed_b])
    differences = [1.0, 2.0, 4.0]
    mean = sum(differences) / 3
    half = stats.t.ppf(0.975, 2) * np.std(differences, ddof=1) / math.sqrt(3)
    assert row.method == "maml − pretrained" and row.num_tasks == 3
    assert row.mean_return == pytest.approx(mean, rel=1e-12)
    assert row.ci95_high - row.mean_return == pytest.approx(half, rel=1e-12)
    assert paired_rows([seed_a, seed_b], other="oracle") == []


def test_median_rows_pool_tasks_of_all_seeds_and_have_no_interval() -> None:
    seed_a = {"maml": np.array([[1.0, 2.0, 3.0], [-500.0, 4.0, 5.0]])}
    seed_b = {"maml": np.array([[4.0, 5.0, 6.0], [6.0, 7.0, -900.0]])}
    rows = median_rows([seed_a, seed_b])
    assert [r.step for r in rows] == [0, 1]
    assert [r.mean_return for r in rows] == [3.5, 4.5]  # outliers do not move a median
    assert rows[0].method == "maml, median" and rows[0].num_tasks == 6
    assert math.isnan(rows[0].ci95_high)
    assert "| maml, median | 3.5 | 4.5 |" in markdown_table("navigation", rows)
    assert median_rows([seed_a], method="oracle") == []


def test_late_gain_is_the_last_window_mean_minus_the_one_before() -> None:
    returns = np.arange(20.0) ** 2  # T = 20, w = 2: mean(324, 361) - mean(256, 289)
    assert late_gain(returns) == pytest.approx((324 + 361 - 256 - 289) / 2)
    assert late_gain(np.full(50, 3.0)) == 0.0  # a flat curve
    assert late_gain(np.arange(30.0), fraction=0.5) == pytest.approx(15.0)
    assert late_gain([1.0, 4.0]) == pytest.approx(3.0)  # w = 1 at T < 10
    assert math.isnan(late_gain([1.0]))


def test_run_cost_late_gain_reads_post_update_returns(tmp_path: Path) -> None:
    rows = [
        {
            "iteration": i,
            "env_steps": 10.0 * (i + 1),
            "time/sampling_s": 1.0,
            "time/optimization_s": 1.0,
            "returns/post_update": float(min(i, 15)),  # rises, then flat from iteration 15
        }
        for i in range(40)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cost(tmp_path).late_gain == 0.0
    rows = rows[:16]  # T = 16, w = 1: R[15] - R[14]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cost(tmp_path).late_gain == pytest.approx(1.0)
