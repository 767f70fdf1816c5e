"""The exploration and adaptation diagnostics against closed forms (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_batch, make_policy

from maml_rl.diagnostics import adaptation, exploration, step_sizes


def test_entropy_and_log_std_statistics_are_the_gaussians() -> None:
    _, theta = make_policy()
    theta = {**theta, "log_std": torch.tensor([-1.0, 0.5], dtype=torch.float64)}
    metrics = exploration(theta)
    expected = torch.distributions.Normal(0.0, torch.exp(theta["log_std"])).entropy().sum()
    assert metrics["policy/entropy"] == pytest.approx(float(expected), rel=1e-12)
    assert metrics["policy/log_std_mean"] == pytest.approx(-0.25)
    assert (metrics["policy/log_std_min"], metrics["policy/log_std_max"]) == (-1.0, 0.5)
    assert exploration({"logits.0.weight": torch.zeros(2, 2)}) == {}


def test_adaptation_size_by_hand() -> None:
    policy, theta = make_policy()
    post, _ = make_batch(2)
    n = post.num_tasks
    same = {k: v.expand(n, *v.shape).clone() for k, v in theta.items()}
    unchanged = adaptation(policy, theta, same, post)
    assert unchanged == {"adaptation/step_norm": 0.0, "adaptation/kl_pre_post": 0.0}
    # task n moves only its log-std, by d_n on both action dims: ‖φ_n − θ‖ = sqrt(2)|d_n| and
    # KL(N(μ, σ) ‖ N(μ, σ e^d)) = Σ_i [d + e^{-2d}/2 − 1/2] at every state
    shifts = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    phi = {k: v.clone() for k, v in same.items()}
    phi["log_std"] = phi["log_std"] + shifts[:, None]
    metrics = adaptation(policy, theta, phi, post)
    assert metrics["adaptation/step_norm"] == pytest.approx(
        float((math.sqrt(2) * shifts.abs()).mean()), rel=1e-12
    )
    per_task = 2 * (shifts + torch.exp(-2 * shifts) / 2 - 0.5)
    assert metrics["adaptation/kl_pre_post"] == pytest.approx(float(per_task.mean()), rel=1e-10)


def test_step_sizes_report_each_learned_alpha() -> None:
    assert step_sizes({}) == {}
    assert step_sizes({"_scalar": torch.tensor(0.25)}) == {"adaptation/step_size": 0.25}
    per_parameter = {"w": torch.tensor([0.1, 0.3]), "b": torch.tensor([0.5])}
    assert step_sizes(per_parameter)["adaptation/step_size"] == pytest.approx(0.3)
    per_step = {"_step0": torch.tensor(0.1), "_step1": torch.tensor(0.05)}
    assert step_sizes(per_step) == pytest.approx(
        {"adaptation/step_size_1": 0.1, "adaptation/step_size_2": 0.05}
    )
