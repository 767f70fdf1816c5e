"""Evaluation: summary statistics by hand, adaptation returns from `collect`, the methods'
rules (oracle not adapted, learned step sizes), common random numbers and reproducibility."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from process_env_helpers import GymOnly

from maml_rl import checkpoint
from maml_rl.build import build
from maml_rl.checkpoint import CheckpointError
from maml_rl.config import Config, ConfigError
from maml_rl.evaluate import (
    COLUMNS,
    adaptation_returns,
    evaluate_run,
    step_size_schedule,
    summarize,
)
from maml_rl.evaluation_files import save
from maml_rl.inner import init_step_size
from maml_rl.policy import parameters_of


def tiny_config(**overrides: object) -> Config:
    values: dict = dict(
        env_kwargs={"max_episode_steps": 10},
        hidden_sizes=(16,),
        fast_batch_size=2,
        meta_batch_size=2,
    )
    return Config(**{**values, **overrides})


def fake_run(run_dir: Path, init_seed: int = 1, **overrides: object) -> Path:
    """A run directory whose checkpoints hold a freshly initialised policy (no training)."""
    cfg = tiny_config(**overrides)
    _, policy, _ = build(cfg, torch.Generator().manual_seed(init_seed))
    theta = parameters_of(policy)
    state = {
        "iteration": 0,
        "theta": theta,
        "step_size": init_step_size(theta, cfg.learn_step_size, cfg.fast_lr),
        "rng": {},
        "config": cfg.to_dict(),
        "env_steps": 0,
        "best_return": 0.0,
    }
    run_dir.mkdir(parents=True)
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt"):
        checkpoint.save_atomic(state, run_dir / name)
    return run_dir


def test_summarize_matches_hand_computed_mean_standard_error_and_t_interval() -> None:
    rows = summarize(np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]), "maml")
    # step 0: mean 2.5; std(ddof=1) = sqrt(5/3); SE = std / sqrt(4); t_{0.975, 3} = 3.182446
    std_error = math.sqrt(5 / 3) / 2
    half_width = 3.182446305284263 * std_error
    first = rows[0]
    assert (first.method, first.step, first.num_tasks) == ("maml", 0, 4)
    assert first.mean_return == pytest.approx(2.5)
    assert first.std_error == pytest.approx(0.6454972243679028)
    assert first.std_error == pytest.approx(std_error)
    assert first.ci95_low == pytest.approx(2.5 - half_width)
    assert first.ci95_high == pytest.approx(2.5 + half_width)
    # step 1: no spread, the interval collapses on the mean
    assert (rows[1].step, rows[1].mean_return, rows[1].std_error) == (1, 2.0, 0.0)
    assert rows[1].ci95_low == rows[1].ci95_high == 2.0


def test_summarize_of_a_single_task_has_no_interval() -> None:
    (row,) = summarize(np.array([[-3.0]]))
    assert row.mean_return == -3.0 and math.isnan(row.std_error) and math.isnan(row.ci95_low)


def test_step_size_schedule_default_and_given() -> None:
    assert step_size_schedule(0.1, 3) == [0.1, 0.05, 0.05]  # REFERENCE: 0.1, then 0.05
    assert step_size_schedule(0.5, 1) == [0.5]
    assert step_size_schedule(0.1, 0) == []
    assert step_size_schedule(0.1, 3, [0.2, 0.1]) == [0.2, 0.1, 0.1]  # last value repeated
    # a run meta-trained with 3 inner steps adapts with its training step size for those 3
    assert step_size_schedule(0.1, 5, trained_steps=3) == [0.1, 0.1, 0.1, 0.05, 0.05]
    assert step_size_schedule(0.1, 2, trained_steps=3) == [0.1, 0.1]
    with pytest.raises(ConfigError, match="3 step sizes for 2 steps"):
        step_size_schedule(0.1, 2, [0.1, 0.1, 0.1])
    with pytest.raises(ConfigError, match="positive"):
        step_size_schedule(0.1, 2, [0.1, -1.0])


def test_adaptation_returns_shape_and_step_zero_is_a_plain_sample() -> None:
    cfg = tiny_config()
    family, policy, sampler = build(cfg, torch.Generator().manual_seed(0))
    theta = parameters_of(policy)
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    seeds = [11, 12, 13]
    returns = adaptation_returns(sampler, theta, tasks, [0.1, 0.05], seeds, cfg)
    assert returns.shape == (3, 3) and np.isfinite(returns).all()
    direct = sampler.sample(theta, tasks, seed=11, per_task=False).episode_returns.mean(dim=1)
    np.testing.assert_allclose(returns[0], direct.double().numpy())
    assert not np.allclose(returns[1], returns[0])
    sampler.close()


def test_mean_actions_adapt_on_the_sampled_episodes_and_measure_the_mean_policy() -> None:
    from maml_rl.evaluate import adaptation_batches
    from maml_rl.maml import collect

    cfg = tiny_config()
    family, policy, sampler = build(cfg, torch.Generator().manual_seed(0))
    theta = parameters_of(policy)
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    seeds, steps = [11, 12, 13], [0.1, 0.05]
    batches = adaptation_batches(sampler, theta, tasks, steps, seeds, cfg, actions="mean")
    _, adapted = collect(sampler, theta, tasks, steps, seeds, cfg)  # what adaptation made
    expected = [
        sampler.sample(p, tasks, seed=seeds[i], per_task=i > 0, deterministic=True)
        for i, p in enumerate([theta, *adapted])
    ]
    assert len(batches) == 3
    for got, want in zip(batches, expected, strict=True):
        assert torch.equal(got.actions, want.actions)
        assert torch.equal(got.rewards, want.rewards)
    sampled = adaptation_batches(sampler, theta, tasks, steps, seeds, cfg)
    assert not torch.equal(sampled[1].actions, batches[1].actions)
    with pytest.raises(ConfigError, match="--actions must be one of"):
        adaptation_batches(sampler, theta, tasks, steps, seeds, cfg, actions="greedy")
    sampler.close()


def test_mean_and_sampled_evaluations_are_never_merged_or_compared(tmp_path: Path) -> None:
    from maml_rl.api import evaluate
    from maml_rl.compare import check_comparable, load_evaluation
    from maml_rl.evaluation_files import read_task_returns

    run = fake_run(tmp_path / "run")
    other = fake_run(tmp_path / "other")
    first = evaluate(run, num_steps=1, num_tasks=3, baselines=["random"], progress=False)
    assert first.actions == "sampled"
    record = json.loads((run / "eval" / "evaluation.json").read_text())
    del record["actions"]  # as an evaluation saved before the key was recorded
    (run / "eval" / "evaluation.json").write_text(json.dumps(record))
    mean = evaluate(run, num_steps=1, num_tasks=3, actions="mean", progress=False)
    assert json.loads((run / "eval" / "evaluation.json").read_text())["actions"] == "mean"
    # the older (sampled) evaluation is set aside, not merged: random is not kept beside it
    assert set(read_task_returns(run / "eval" / "adaptation_tasks.csv")) == {"maml"}
    assert set(read_task_returns(run / "eval" / "replaced" / "1" / "adaptation_tasks.csv")) == {
        "maml",
        "random",
    }
    assert not np.array_equal(mean.returns["maml"], first.returns["maml"])
    evaluate(other, num_steps=1, num_tasks=3, progress=False)
    with pytest.raises(CheckpointError, match="different actions"):
        check_comparable(load_evaluation(run), load_evaluation(other))
    with pytest.raises(ConfigError, match="--actions must be one of"):
        evaluate(run, num_steps=1, num_tasks=3, actions="mode", progress=False)


def test_every_method_sees_the_same_tasks_and_seeds_and_the_oracle_is_not_adapted(
    tmp_path: Path,
) -> None:
    run = fake_run(tmp_path / "run", init_seed=1)
    pretrained = fake_run(tmp_path / "pretrained", init_seed=1, algo="pretrained")
    oracle = fake_run(tmp_path / "oracle", init_seed=2, algo="oracle")
    baselines = {"pretrained": pretrained, "random": None, "oracle": oracle}
    evaluation = evaluate_run(run, baselines, num_steps=2, num_tasks=3)
    returns = evaluation.returns
    assert list(returns) == ["maml", "pretrained", "random", "oracle"]
    assert all(r.shape == (3, 3) for r in returns.values())
    # same parameters, same schedule, same tasks and seeds: identical curves
    np.testing.assert_array_equal(returns["pretrained"], returns["maml"])
    assert not np.allclose(returns["random"], returns["maml"])
    assert (returns["oracle"] == returns["oracle"][0]).all()
    assert evaluation.step_sizes == (0.1, 0.05) and not evaluation.learned_step_size

    rows = evaluation.rows
    assert len(rows) == 4 * 3
    oracle_rows = [(r.mean_return, r.ci95_low) for r in rows if r.method == "oracle"]
    assert len(set(oracle_rows)) == 1


def test_same_eval_seed_gives_an_identical_csv(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    texts = []
    for out, seed in (("a", 5), ("b", 5), ("c", 6)):
        evaluation = evaluate_run(run, {"random": None}, 1, 2, eval_seed=seed)
        csv_path, png_path = save(evaluation, tmp_path / out)
        texts.append(csv_path.read_text())
        assert png_path.stat().st_size > 0
    assert texts[0] == texts[1] != texts[2]
    lines = texts[0].splitlines()
    assert lines[0].split(",") == list(COLUMNS) and len(lines) == 1 + 2 * 2


def test_meta_learned_step_sizes_replace_the_schedule_for_maml_only(tmp_path: Path) -> None:
    fixed = fake_run(tmp_path / "fixed")
    learned = fake_run(tmp_path / "learned", learn_step_size="scalar")  # alpha = fast_lr = 0.1
    with_fixed = evaluate_run(fixed, {"random": None}, 1, 2, step_sizes=[0.1])
    with_learned = evaluate_run(learned, {"random": None}, 1, 2, step_sizes=[0.3])
    assert with_learned.learned_step_size and with_learned.step_sizes == (0.3,)
    np.testing.assert_allclose(with_learned.returns["maml"], with_fixed.returns["maml"], rtol=1e-5)
    assert not np.allclose(with_learned.returns["random"][1], with_fixed.returns["random"][1])


def test_per_step_learned_step_sizes_adapt_step_s_with_alpha_s(tmp_path: Path) -> None:
    """A per_step run trained with 2 steps adapts with alpha_1, alpha_2, then alpha_2 again:
    the same returns as the fixed schedule 0.1, 0.05, 0.05."""
    fixed = fake_run(tmp_path / "fixed")
    learned = fake_run(tmp_path / "learned", learn_step_size="per_step", num_steps=2)
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt"):
        state = checkpoint.load(learned / name)
        state["step_size"] = {"_step0": torch.tensor(0.1), "_step1": torch.tensor(0.05)}
        checkpoint.save_atomic(state, learned / name)
    with_fixed = evaluate_run(fixed, {}, 3, 2, step_sizes=[0.1, 0.05])
    with_learned = evaluate_run(learned, {}, 3, 2)
    assert with_learned.learned_step_size
    np.testing.assert_allclose(with_learned.returns["maml"], with_fixed.returns["maml"], rtol=1e-5)
    with_first = evaluate_run(fixed, {}, 3, 2, step_sizes=[0.1])
    assert not np.allclose(with_first.returns["maml"][2], with_fixed.returns["maml"][2])


def test_mismatched_or_wrong_baselines_are_one_line_errors(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    other_env = fake_run(
        tmp_path / "other", algo="pretrained", env_kwargs={"max_episode_steps": 12}
    )
    with pytest.raises(ConfigError, match="was trained on navigation"):
        evaluate_run(run, {"pretrained": other_env}, 1, 2)
    with pytest.raises(ConfigError, match="is an algo=maml run, expected algo=oracle"):
        evaluate_run(run, {"oracle": run}, 1, 2)
    with pytest.raises(ConfigError, match="unknown baseline"):
        evaluate_run(run, {"expert": None}, 1, 2)
    with pytest.raises(ConfigError, match="evaluate a MAML run"):
        evaluate_run(other_env, {}, 1, 2)
    with pytest.raises(CheckpointError, match="run directory not found"):
        evaluate_run(tmp_path / "nowhere", {}, 1, 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        evaluate_run(tmp_path / "empty", {}, 1, 2)


class NoOracle(GymOnly):
    """A plug-in family without oracle_features."""


def test_an_oracle_for_a_family_without_oracle_features_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found up front, not after the pretrained baseline has trained."""
    from maml_rl.cli import main

    run = tmp_path / "run"
    argv = ["train", "navigation", "--out", str(run), "--no-progress", "--set", "num_batches=1"]
    tiny = [
        "meta_batch_size=2",
        "fast_batch_size=2",
        "hidden_sizes=[8]",
        "env=test_evaluate:NoOracle",
    ]
    assert main([*argv, *tiny]) == 0
    capsys.readouterr()
    argv = ["evaluate", str(run), "--baselines", "pretrained,oracle", "--train-baselines", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "the oracle baseline needs NoOracle.oracle_features(task)" in err
    assert not (run / "baselines").exists()


def test_a_second_evaluation_keeps_the_first_ones_methods_or_archives_it(tmp_path: Path) -> None:
    from maml_rl.cli import main
    from maml_rl.evaluation_files import read_task_returns

    run = tmp_path / "run"
    argv = ["train", "navigation", "--out", str(run), "--no-progress", "--set", "num_batches=1"]
    assert main([*argv, "meta_batch_size=2", "fast_batch_size=2", "hidden_sizes=[8]"]) == 0
    common = ["evaluate", str(run), "--num-tasks", "3", "--num-steps", "1", "--no-progress"]
    assert main([*common, "--baselines", "random"]) == 0
    first = read_task_returns(run / "eval" / "adaptation_tasks.csv")
    assert main(common) == 0  # maml only, same protocol: random is kept, maml recomputed equal
    second = read_task_returns(run / "eval" / "adaptation_tasks.csv")
    assert set(second) == {"maml", "random"}
    np.testing.assert_array_equal(second["random"], first["random"])
    np.testing.assert_array_equal(second["maml"], first["maml"])
    record = json.loads((run / "eval" / "evaluation.json").read_text())
    assert record["ran_on"] == {"maml": "cpu/float32", "random": "cpu/float32"}
    assert main([*common[:3], "4", *common[4:]]) == 0  # another protocol: the old one moves
    assert set(read_task_returns(run / "eval" / "adaptation_tasks.csv")) == {"maml"}
    archived = read_task_returns(run / "eval" / "replaced" / "1" / "adaptation_tasks.csv")
    assert set(archived) == {"maml", "random"}


def _as_if_trained_on_cuda(run_dir: Path) -> None:
    """Rewrite a CPU run's checkpoints as those of a run trained with device=cuda."""
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt"):
        state = checkpoint.load(run_dir / name)
        state["config"]["device"] = "cuda"
        checkpoint.save_atomic(state, run_dir / name)


def test_a_run_trained_on_cuda_is_evaluated_and_rendered_on_the_cpu_with_device_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --device a GPU-trained run asks for CUDA (one line); --device cpu runs it, with
    every method, and gives the returns of the same run trained on the CPU, bit for bit."""
    from maml_rl.cli import main
    from maml_rl.evaluation_files import read_task_returns

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    runs = {}
    for where in ("cpu", "cuda"):
        runs[where] = fake_run(tmp_path / where / "run")
        pretrained = fake_run(tmp_path / where / "pretrained", init_seed=2, algo="pretrained")
        if where == "cuda":
            _as_if_trained_on_cuda(runs[where])
            _as_if_trained_on_cuda(pretrained)
    common = ["--num-tasks", "3", "--num-steps", "1", "--baselines", "random", "--no-progress"]

    def evaluate(where: str, *extra: str) -> int:
        pretrained = str(tmp_path / where / "pretrained")
        return main(["evaluate", str(runs[where]), "--pretrained", pretrained, *common, *extra])

    capsys.readouterr()
    assert evaluate("cuda") == 2
    err = capsys.readouterr().err.strip()
    assert "device 'cuda' requested but CUDA is not available" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert evaluate("cuda", "--device", "cpu") == 0
    assert evaluate("cpu") == 0
    on_cpu, from_cuda = (
        read_task_returns(runs[where] / "eval" / "adaptation_tasks.csv") for where in runs
    )
    assert set(from_cuda) == {"maml", "pretrained", "random"}
    for name, returns in on_cpu.items():
        np.testing.assert_array_equal(from_cuda[name], returns)

    out = tmp_path / "nav.png"
    show = ["render", str(runs["cuda"]), "--steps", "0,1", "--eval-tasks", "3", "--out", str(out)]
    assert main(show) == 2
    assert main([*show, "--device", "cpu"]) == 0 and out.exists()
    capsys.readouterr()
    assert main([*show, "--device", "tpu"]) == 2
    assert "device" in capsys.readouterr().err


def test_an_evaluation_records_where_each_method_ran_and_notes_a_merge_across_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ran_on` is recorded beside the protocol, not in it: a method kept from an evaluation
    that ran elsewhere (or that predates the record) keeps its entry, and the CLI says so."""
    from maml_rl.cli import main
    from maml_rl.compare import load_evaluation

    run = fake_run(tmp_path / "run")
    common = ["evaluate", str(run), "--num-tasks", "3", "--num-steps", "1", "--no-progress"]
    assert main([*common, "--baselines", "random"]) == 0
    assert "different devices" not in capsys.readouterr().out
    path = run / "eval" / "evaluation.json"
    record = json.loads(path.read_text())
    assert record.pop("ran_on") == {"maml": "cpu/float32", "random": "cpu/float32"}
    path.write_text(json.dumps(record | {"ran_on": {"random": "cuda/float32"}}))
    assert main(common) == 0  # same protocol: random is kept with the device it ran on
    out = capsys.readouterr().out
    assert "merges methods run on different devices (random on cuda/float32, maml on cpu" in out
    assert json.loads(path.read_text())["ran_on"] == {
        "random": "cuda/float32",
        "maml": "cpu/float32",
    }
    path.write_text(json.dumps(record))  # saved before `ran_on` existed: same protocol still
    assert main(common) == 0
    assert "random on unrecorded" in capsys.readouterr().out
    assert not (run / "eval" / "replaced").exists()
    assert set(load_evaluation(run).returns) == {"maml", "random"}
