"""The Python API at the top of `maml_rl`: load_config, train with callbacks (stop, resume),
evaluate, load_run, and the names it exports."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pytest
import torch

import maml_rl
from maml_rl import api, checkpoint
from maml_rl.logger import read_metrics

TINY: dict[str, Any] = dict(  # config overrides, as load_config(**overrides: Any) takes them
    num_batches=3,
    meta_batch_size=2,
    fast_batch_size=2,
    env_kwargs={"max_episode_steps": 10},
    hidden_sizes=[8],
    cg_iters=2,
    torch_threads=1,
)


class Quiet(TypedDict):
    """train()'s keywords for a silent run (typed, so that **QUIET checks against them)."""

    progress: bool
    tensorboard: bool
    process_settings: bool


QUIET = Quiet(progress=False, tensorboard=False, process_settings=False)


def tiny_config() -> maml_rl.Config:
    return maml_rl.load_config("navigation", **TINY)


def test_load_config_by_shipped_name_with_overrides() -> None:
    cfg = tiny_config()
    assert isinstance(cfg, maml_rl.Config)
    assert (cfg.env, cfg.num_batches, cfg.hidden_sizes) == ("navigation", 3, (8,))
    assert cfg.env_kwargs["max_episode_steps"] == 10 and "low" in cfg.env_kwargs  # merged
    with pytest.raises(maml_rl.ConfigError, match="unknown config key 'fast_lrr'"):
        maml_rl.load_config("navigation", fast_lrr=0.1)
    with pytest.raises(maml_rl.ConfigError, match="no config named 'nope'; shipped configs: "):
        maml_rl.load_config("nope")


def test_top_level_names_are_the_api_functions_even_after_their_modules_load() -> None:
    importlib.import_module("maml_rl.train")
    importlib.import_module("maml_rl.evaluate")
    from maml_rl import evaluate, train

    assert train is api.train and maml_rl.train is api.train
    assert evaluate is api.evaluate and maml_rl.evaluate is api.evaluate
    for name in maml_rl.__all__:
        value = getattr(maml_rl, name)
        assert not name.startswith("_") and value.__doc__ and value.__doc__.strip(), name
    assert maml_rl.Normal is importlib.import_module("maml_rl.policy").Normal
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        maml_rl.nothing  # noqa: B018


def test_dir_lists_the_public_api_not_the_package_imports() -> None:
    names = dir(maml_rl)
    assert names == sorted([*maml_rl.__all__, "__version__"])
    assert not {"sys", "importlib", "Any", "ModuleType", "EXPORTS"} & set(names)


def test_the_package_takes_attributes_after_maml_rl_types_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loading the submodule maml_rl.types must not shadow the standard `types` that the
    package's __setattr__ uses (setting a name, as monkeypatch or an import does, raised)."""
    importlib.import_module("maml_rl.types")
    monkeypatch.setattr(maml_rl, "load_config", maml_rl.load_config)
    importlib.import_module("maml_rl.returns")
    assert maml_rl.returns is importlib.import_module("maml_rl.returns")


def test_train_stopped_by_a_callback_resumes_to_the_end(tmp_path: Path) -> None:
    seen: list[maml_rl.IterationInfo] = []

    def stop_after_first(info: maml_rl.IterationInfo) -> bool:
        seen.append(info)
        return info.iteration < 1  # False after iteration 1: stop

    cfg = tiny_config()
    rows = maml_rl.train(cfg, tmp_path / "run", callbacks=[stop_after_first], **QUIET)
    assert [info.iteration for info in seen] == [0, 1] and len(rows) == 2
    info = seen[-1]
    assert info.metrics is rows[-1] and info.num_iterations == 3 and info.config == cfg
    saved = checkpoint.load(tmp_path / "run" / "checkpoint_latest.pt")
    assert saved["iteration"] == 1  # the stopping iteration is saved
    for name, value in info.theta.items():
        torch.testing.assert_close(value, saved["theta"][name])

    def stop_by_raising(info: maml_rl.IterationInfo) -> None:
        seen.append(info)

    rows = maml_rl.train(None, tmp_path / "run", resume=True, callbacks=[stop_by_raising], **QUIET)
    assert [info.iteration for info in seen] == [0, 1, 2] and len(rows) == 1
    assert [row["iteration"] for row in read_metrics(tmp_path / "run")] == [0, 1, 2]

    # the same run without a stop: identical rows (the stop left a resumable run)
    straight = maml_rl.train(cfg, tmp_path / "straight", **QUIET)
    assert straight[2]["returns/post_update"] == rows[0]["returns/post_update"]

    # StopTraining, and a resume that changes only what a resume may (num_batches)
    def raise_stop(info: maml_rl.IterationInfo) -> None:
        raise maml_rl.StopTraining("enough")

    longer = maml_rl.load_config("navigation", **(TINY | {"num_batches": 5}))
    rows = maml_rl.train(longer, tmp_path / "run", resume=True, callbacks=[raise_stop], **QUIET)
    assert (
        len(rows) == 1
        and checkpoint.load(tmp_path / "run" / "checkpoint_latest.pt")["iteration"] == 3
    )
    other = maml_rl.load_config("navigation", **(TINY | {"fast_lr": 0.5, "num_batches": 5}))
    with pytest.raises(checkpoint.CheckpointError, match=r"cannot change fast_lr=0\.5"):
        maml_rl.train(other, tmp_path / "run", resume=True, **QUIET)


def test_evaluate_and_load_run_from_python(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    maml_rl.train(tiny_config(), run_dir, **QUIET)
    run = maml_rl.load_run(run_dir)
    assert isinstance(run, maml_rl.LoadedRun) and run.iteration == 2 and "log_std" in run.theta

    result = maml_rl.evaluate(
        run_dir, num_tasks=3, num_steps=2, baselines=["random"], process_settings=False
    )
    assert isinstance(result, maml_rl.Evaluation)
    assert set(result.returns) == {"maml", "random"}
    assert result.returns["maml"].shape == (3, 3)  # [S + 1, N]
    np.testing.assert_allclose(result.means["maml"], result.returns["maml"].mean(axis=1))
    assert [row.mean_return for row in result.rows if row.method == "maml"] == pytest.approx(
        list(result.means["maml"])
    )
    assert (run_dir / "eval" / "adaptation_tasks.csv").is_file()  # saved as the CLI does

    again = maml_rl.evaluate(run_dir, num_tasks=3, num_steps=2, save=False, process_settings=False)
    np.testing.assert_array_equal(again.returns["maml"], result.returns["maml"])
    with pytest.raises(maml_rl.ConfigError, match="no oracle baseline: pass --oracle DIR"):
        maml_rl.evaluate(run_dir, num_tasks=3, baselines=["oracle"], process_settings=False)


def test_train_and_evaluate_apply_the_process_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(api, "configure_process", calls.append)
    run_dir = tmp_path / "run"
    cfg = maml_rl.load_config("navigation", **(TINY | {"num_batches": 1}))
    maml_rl.train(cfg, run_dir, progress=False, tensorboard=False)
    maml_rl.evaluate(run_dir, num_tasks=2, num_steps=1, save=False, process_settings=False)
    assert calls == [True, False]


@pytest.mark.parametrize("threads", [2, None])
def test_train_leaves_the_callers_torch_thread_count(tmp_path: Path, threads: int | None) -> None:
    """A config's `torch_threads` (or AutoThreads' choice, with null) holds during training
    only: the caller's setting is back afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = maml_rl.load_config("navigation", **(TINY | {"torch_threads": threads}))
        seen: list[int] = []

        def record(info: maml_rl.IterationInfo) -> None:
            seen.append(torch.get_num_threads())

        maml_rl.train(cfg, tmp_path / "run", callbacks=[record], **QUIET)
        if threads is not None:
            assert seen == [threads] * TINY["num_batches"]
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
