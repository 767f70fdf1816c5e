"""Our navigation policy in pytorch-maml-rl's NormalMLPPolicy layout computes the same policy."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.pytorch_maml_rl_test import their_state_dict
from maml_rl.policy import GaussianMLPPolicy, Normal, forward, parameters_of


def _their_forward(state: dict[str, torch.Tensor], obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """pytorch-maml-rl's NormalMLPPolicy.forward (maml_rl/policies/normal_mlp.py at 21d4ba1),
    tanh nonlinearity, min_std 1e-6: layer1, layer2, mu, then scale = exp(clamp(sigma))."""
    x = torch.tanh(F.linear(obs, state["layer1.weight"], state["layer1.bias"]))
    x = torch.tanh(F.linear(x, state["layer2.weight"], state["layer2.bias"]))
    mu = F.linear(x, state["mu.weight"], state["mu.bias"])
    return mu, torch.exp(torch.clamp(state["sigma"], min=math.log(1e-6)))


def test_a_checkpoint_converts_to_the_same_gaussian(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (64, 64), "tanh", init_std=0.7, generator=generator)
    theta = {n: p + 0.1 * torch.randn(p.shape, generator=generator) for n, p in
             parameters_of(policy).items()}  # fmt: skip
    torch.save({"theta": theta, "iteration": 3}, tmp_path / "checkpoint_latest.pt")
    state = their_state_dict(tmp_path)  # a run directory: its checkpoint_latest.pt
    obs = torch.randn(16, 2, generator=generator)
    ours = forward(policy, theta, obs)
    assert isinstance(ours, Normal)
    mu, scale = _their_forward(state, obs)
    torch.testing.assert_close(mu, ours.mean)
    torch.testing.assert_close(scale.expand_as(mu), ours.log_std.exp())
    assert their_state_dict(tmp_path / "checkpoint_latest.pt").keys() == state.keys()


def test_a_checksummed_checkpoint_converts_too(tmp_path: Path) -> None:
    """Checkpoints since format 2 wrap their state with a sha256; the export unwraps it."""
    from maml_rl import checkpoint

    policy = GaussianMLPPolicy(2, 2, (64, 64), "tanh", generator=torch.Generator().manual_seed(0))
    theta = parameters_of(policy)
    state = {"iteration": 3, "theta": theta, "step_size": {}, "rng": {}, "config": {}}
    checkpoint.save_atomic(state, tmp_path / "checkpoint_latest.pt")
    theirs = their_state_dict(tmp_path)
    assert set(theirs) == {"layer1.weight", "layer1.bias", "layer2.weight", "layer2.bias",
                           "mu.weight", "mu.bias", "sigma"}  # fmt: skip
