"""Training-curve bands over seeds: the moving average, the interval, and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from scipy import stats

from maml_rl.checkpoint import CheckpointError
from maml_rl.plot import moving_average, plot_training_bands, seed_band


def test_moving_average_is_the_trailing_mean() -> None:
    values = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    expected = [1.0, 2.0, 3.0, 5.0, 7.0]  # windows [1], [1,3], [1,3,5], [3,5,7], [5,7,9]
    np.testing.assert_allclose(moving_average(values, 3), expected)
    np.testing.assert_allclose(moving_average(values, 1), values)


def test_seed_band_is_the_t_interval_over_seeds_cut_to_the_shortest() -> None:
    curves = [np.array([1.0, 2.0, 3.0, 99.0]), np.array([3.0, 2.0, 6.0]), np.array([2.0, 5.0, 0.0])]
    mean, low, high = seed_band(curves)
    stacked = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 6.0], [2.0, 5.0, 0.0]])
    half = stats.t.ppf(0.975, 2) * stacked.std(axis=0, ddof=1) / np.sqrt(3)
    np.testing.assert_allclose(mean, [2.0, 3.0, 3.0])
    np.testing.assert_allclose(low, mean - half)
    np.testing.assert_allclose(high, mean + half)
    one = seed_band([np.array([4.0, 5.0])])
    for part in one:
        np.testing.assert_array_equal(part, [4.0, 5.0])
    with pytest.raises(ValueError, match="at least one"):
        seed_band([])


def write_run(path: Path, pre: list[float], post: list[float]) -> Path:
    path.mkdir(parents=True)
    rows = [
        {
            "iteration": i,
            "env_steps": 1000 * (i + 1),
            "returns/pre_update": a,
            "returns/post_update": b,
        }
        for i, (a, b) in enumerate(zip(pre, post, strict=True))
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_band_figure_of_seeds_and_a_single_baseline(tmp_path: Path) -> None:
    seeds = [
        write_run(
            tmp_path / f"seed{s}",
            [-50.0 + i for i in range(30)],
            [-30.0 + i + s for i in range(30)],
        )
        for s in range(3)
    ]
    oracle = write_run(tmp_path / "oracle", [-5.0] * 25, [-5.0] * 25)
    out = plot_training_bands({"maml": seeds, "oracle": [oracle]}, tmp_path / "t.png", "title")
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 200 and image.shape[1] > 600
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(CheckpointError, match=r"no metrics\.jsonl rows"):
        plot_training_bands({"maml": [tmp_path / "empty"]}, tmp_path / "u.png", "title")
