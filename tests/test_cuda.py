"""The policy and the optimisation on a CUDA device: the same numbers as on the CPU.

In float64 a GPU changes only the order of floating-point sums, so sampling, adaptation, every
meta-gradient estimator, every HVP mode, the ProMP outer step and whole training runs must give
the CPU's results to round-off. These tests need a CUDA GPU and skip without one (run them
with `pytest -m cuda` on a GPU machine); the CPU half of the device handling (a GPU-trained run
evaluated with --device cpu) is tested in test_evaluate.py on every machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from maml_rl import checkpoint
from maml_rl.build import Streams, build
from maml_rl.cli import find_config, main
from maml_rl.config import Config, load
from maml_rl.evaluation_files import read_task_returns
from maml_rl.logger import read_metrics
from maml_rl.maml import TaskData, collect, draw_seeds, meta_step
from maml_rl.policy import parameters_of
from maml_rl.sampler import TrajectorySampler
from maml_rl.tasks import make_family
from maml_rl.types import Params

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GPU = "cuda"
GPU_TYPE = torch.device(GPU).type  # tensors report the index: cuda:0
SMALL = {
    "meta_batch_size": 4,
    "fast_batch_size": 5,
    "hidden_sizes": [16, 16],
    "dtype": "float64",
    "cg_iters": 5,
}
HORIZON = {"navigation": 20, "halfcheetah-vel": 10}


def config(env: str, device: str, **overrides: Any) -> Config:
    values = SMALL | {"env_kwargs": {"max_episode_steps": HORIZON[env]}, "device": device}
    return load(find_config(env), values | overrides)


def built(env: str, device: str, **overrides: Any) -> tuple[Config, Any, TrajectorySampler]:
    """The config, policy and sampler of a small float64 run, initialised from seed 0."""
    cfg = config(env, device, **overrides)
    _, policy, sampler = build(cfg, torch.Generator().manual_seed(0))
    return cfg, policy, sampler


def tasks_and_seeds(cfg: Config) -> tuple[list[Any], list[int]]:
    """The tasks and sampling seeds of one meta-iteration (seed 3's streams)."""
    streams = Streams.from_seed(3)
    family = make_family(cfg.env, cfg.env_kwargs)
    tasks = family.sample_tasks(cfg.meta_batch_size, streams.tasks)
    return tasks, draw_seeds(streams.environments, cfg.num_steps + 1)


def on(device: str, data: TaskData) -> TaskData:
    inner = tuple((batch.to(device), adv.to(device)) for batch, adv in data.inner)
    return TaskData(inner, data.post.to(device), data.post_advantages.to(device))


def assert_params_close(cuda: Params, cpu: Params, rtol: float = 1e-9) -> None:
    assert cuda.keys() == cpu.keys()
    for name in cpu:
        assert cuda[name].device.type == GPU_TYPE, name
        torch.testing.assert_close(cuda[name].cpu(), cpu[name], rtol=rtol, atol=1e-10)


@pytest.mark.parametrize("env", ["navigation", "halfcheetah-vel"])
def test_sampling_with_a_cuda_policy_gives_the_cpu_trajectories(env: str) -> None:
    """Action noise is drawn on the CPU (sampler.action_noise), so the trajectories agree."""
    cfg, _, cpu = built(env, "cpu")
    _, _, cuda = built(env, GPU)
    tasks, seeds = tasks_and_seeds(cfg)
    theta_cpu, theta_cuda = parameters_of(cpu.policy), parameters_of(cuda.policy)
    a = cpu.sample(theta_cpu, tasks, seed=seeds[0], per_task=False)
    b = cuda.sample(theta_cuda, tasks, seed=seeds[0], per_task=False)
    assert b.observations.device.type == GPU_TYPE
    for name in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(b, name).cpu(), getattr(a, name), rtol=1e-9, atol=1e-9)
    cpu.close()
    cuda.close()


@pytest.mark.parametrize("num_steps", [1, 2])
def test_adaptation_on_cuda_gives_the_cpu_parameters(num_steps: int) -> None:
    """collect: sampling, the linear baseline and GAE, then the inner steps, all on the GPU."""
    cfg, _, cpu = built("navigation", "cpu", num_steps=num_steps)
    _, _, cuda = built("navigation", GPU, num_steps=num_steps)
    tasks, seeds = tasks_and_seeds(cfg)
    steps = [cfg.fast_lr] * num_steps
    data_cpu, phi_cpu = collect(cpu, parameters_of(cpu.policy), tasks, steps, seeds, cfg)
    data_cuda, phi_cuda = collect(cuda, parameters_of(cuda.policy), tasks, steps, seeds, cfg)
    for after_cuda, after_cpu in zip(phi_cuda, phi_cpu, strict=True):
        assert_params_close(after_cuda, after_cpu)
    torch.testing.assert_close(data_cuda.post_advantages.cpu(), data_cpu.post_advantages)
    cpu.close()
    cuda.close()


@pytest.mark.parametrize(
    ("hvp", "estimator", "learn_step_size"),
    [
        ("gauss_newton", "maml", "none"),
        ("gauss_newton", "lvc", "none"),
        ("exact", "dice", "none"),
        ("exact", "emaml", "scalar"),
        ("finite_difference", "maml", "per_parameter"),
    ],
)
def test_a_trpo_meta_step_on_cuda_gives_the_cpu_step(
    hvp: str, estimator: str, learn_step_size: str
) -> None:
    """Same batch (sampled on the CPU, moved to the GPU), same theta: same new theta."""
    from maml_rl.inner import init_step_size

    overrides = {"hvp": hvp, "meta_gradient": estimator, "learn_step_size": learn_step_size}
    cfg, policy_cpu, cpu = built("navigation", "cpu", **overrides)
    cfg_cuda, policy_cuda, cuda = built("navigation", GPU, **overrides)
    tasks, seeds = tasks_and_seeds(cfg)
    theta_cpu = parameters_of(policy_cpu)
    alpha_cpu = init_step_size(theta_cpu, learn_step_size, cfg.fast_lr)
    steps = [alpha_cpu or cfg.fast_lr] * cfg.num_steps
    data, _ = collect(cpu, theta_cpu, tasks, steps, seeds, cfg)
    new_cpu, alpha_new_cpu, info_cpu = meta_step(policy_cpu, theta_cpu, alpha_cpu, data, cfg)
    theta_cuda = parameters_of(policy_cuda)
    alpha_cuda = {n: a.to(GPU) for n, a in alpha_cpu.items()}
    new_cuda, alpha_new_cuda, info_cuda = meta_step(
        policy_cuda, theta_cuda, alpha_cuda, on(GPU, data), cfg_cuda
    )
    assert info_cuda.accepted == info_cpu.accepted
    assert info_cuda.line_search_steps == info_cpu.line_search_steps
    assert info_cuda.surrogate_after == pytest.approx(info_cpu.surrogate_after, rel=1e-8)
    assert_params_close(new_cuda, new_cpu, rtol=1e-7)
    if alpha_new_cpu:
        assert_params_close(alpha_new_cuda, alpha_new_cpu, rtol=1e-7)
    cpu.close()
    cuda.close()


TRAIN = [
    "--set", "num_batches=3",
    "--set", "meta_batch_size=4",
    "--set", "fast_batch_size=5",
    "--set", "env_kwargs={max_episode_steps: 20}",
    "--set", "hidden_sizes=[16, 16]",
    "--set", "cg_iters=5",
    "--no-progress",
]  # fmt: skip
COMPARED = ("returns/pre_update", "returns/post_update", "meta/surrogate_after", "meta/kl_after")


@pytest.mark.parametrize(
    "extra",
    [
        ["--set", "meta_gradient=lvc"],
        ["--set", "outer=promp"],
        ["--set", "algo=oracle"],
        ["--set", "algo=pretrained"],
        ["--set", "policy=policy_helpers:LayerNormMLP", "policy_kwargs={hidden: 8}"],
    ],
    ids=["trpo-lvc", "promp", "oracle", "pretrained", "custom-policy"],
)
def test_training_on_cuda_in_float64_follows_the_cpu_run_row_by_row(
    tmp_path: Path, extra: list[str]
) -> None:
    rows = {}
    for name, device in (("cpu", "cpu"), ("cuda", GPU)):
        argv = ["train", "navigation", "--out", str(tmp_path / name), "--device", device]
        assert main([*argv, *TRAIN, "--set", "dtype=float64", *extra]) == 0
        rows[name] = read_metrics(tmp_path / name)
    assert len(rows["cuda"]) == len(rows["cpu"]) == 3
    for row_cuda, row_cpu in zip(rows["cuda"], rows["cpu"], strict=True):
        for key in COMPARED:
            if key in row_cpu:
                assert row_cuda[key] == pytest.approx(row_cpu[key], rel=1e-6, abs=1e-9), key
    state = checkpoint.load(tmp_path / "cuda" / "checkpoint_latest.pt")
    assert all(p.device.type == "cpu" for p in state["theta"].values())  # loads anywhere
    assert state["config"]["device"] == GPU


def test_a_float32_cuda_run_resumes_and_evaluates_on_either_device(tmp_path: Path) -> None:
    """The default dtype: resume continues the interrupted run (to float32 round-off); the run
    evaluates on the GPU and, with --device cpu, on the CPU, with the same returns."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["--device", GPU, *TRAIN]
    assert main(["train", "navigation", "--out", str(whole), *common]) == 0
    assert (
        main(["train", "navigation", "--out", str(split), *common, "--set", "num_batches=2"]) == 0
    )
    assert main(["train", "--resume", str(split), "--set", "num_batches=3", "--no-progress"]) == 0
    a, b = read_metrics(whole), read_metrics(split)
    assert [r["iteration"] for r in b] == [0, 1, 2]
    for row_a, row_b in zip(a, b, strict=True):
        for key in COMPARED:
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-4, abs=1e-6), key
    returns = {}
    for device in (GPU, "cpu"):
        evaluate = ["evaluate", str(whole), "--num-tasks", "4", "--num-steps", "2"]
        assert main([*evaluate, "--baselines", "random", "--device", device, "--no-progress"]) == 0
        returns[device] = read_task_returns(whole / "eval" / "adaptation_tasks.csv")
        (whole / "eval" / "adaptation_tasks.csv").unlink()
    for name in ("maml", "random"):
        np.testing.assert_allclose(returns[GPU][name], returns["cpu"][name], rtol=1e-3)
