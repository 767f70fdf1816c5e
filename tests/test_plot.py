"""Training-curve bands over seeds: the moving average, the interval, and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
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


def test_training_curves_are_labelled_by_algorithm_and_smoothed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`maml-rl plot`'s figure: the MAML run is "maml" (not its folder's name), two runs of
    one algorithm add their folders; curves are the moving average over the raw returns in a
    light shade, or the raw returns alone with smooth=1."""
    from maml_rl import plot

    post = [float(i % 2) for i in range(20)]  # 0, 1, 0, 1, ...: smoothing shows
    runs = [write_run(tmp_path / name, [0.0] * 20, post) for name in ("nav-a", "nav-b")]
    (runs[0] / "config.yaml").write_text("algo: maml\n")
    (runs[1] / "config.yaml").write_text("algo: oracle\n")
    assert plot.training_labels(runs) == ["maml", "oracle"]
    assert plot.training_labels([runs[0], runs[0]]) == [f"maml ({runs[0]})"] * 2

    figures: list[Figure] = []

    def keep(figure: Figure, path: str | Path) -> Path:
        figures.append(figure)
        return Path(path)

    monkeypatch.setattr(plot, "_save", keep)
    plot.plot_training(runs[:1], tmp_path / "t.png")
    by_iteration = figures[-1].axes[0]
    labelled = {line.get_label(): line for line in by_iteration.get_lines()}
    assert {"maml (post-update)", "maml (pre-update)"} <= set(labelled)
    smoothed = np.asarray(labelled["maml (post-update)"].get_ydata())
    np.testing.assert_allclose(smoothed, moving_average(np.array(post), 10))
    legend = by_iteration.get_legend()
    assert legend is not None
    assert legend.get_title().get_text() == "moving average over 10 iterations"
    plot.plot_training(runs[:1], tmp_path / "raw.png", smooth=1)
    raw = [np.asarray(line.get_ydata()) for line in figures[-1].axes[0].get_lines()]
    assert len(raw) == 2 and list(raw[0]) == post


def test_plot_command_smooths_by_default_and_draws_raw_returns_with_smooth_1(
    tmp_path: Path,
) -> None:
    from maml_rl.cli import main

    run = write_run(tmp_path / "run", [0.0] * 12, [1.0] * 12)
    assert main(["plot", str(run)]) == 0 and (run / "training.png").is_file()
    assert main(["plot", str(run), "--smooth", "1", "--out", str(tmp_path / "raw.png")]) == 0
    assert (tmp_path / "raw.png").is_file()


def test_a_figure_file_of_a_format_matplotlib_cannot_write_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a traceback from savefig; the suffix's case does not matter (.PNG is a PNG)."""
    from maml_rl.cli import main

    run = write_run(tmp_path / "run", [0.0] * 3, [1.0] * 3)
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot draw a figure as .txt" in err and ".png" in err
    assert not (tmp_path / "curves.txt").exists()
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.PNG")]) == 0
    assert (tmp_path / "curves.PNG").read_bytes()[:4] == b"\x89PNG"
