"""What a run logs about its policy's exploration and its adaptation, every iteration.

Pure functions of the meta-parameters, the adapted parameters and the post-update batch:

    policy/log_std_mean, _min, _max   the Gaussian policy's state-independent log-std
    policy/entropy                    H(π_θ) = Σ_i (log σ_i + ½ log 2πe)  (per state, nats);
                                      a categorical (or state-dependent Gaussian) policy's is
                                      the mean over the states of the pre-update batch, of
                                      H = −Σ_a p_a log p_a (or the Gaussian's per state)
    adaptation/step_norm              mean_n ‖φ_n − θ‖₂ over all parameters (the inner update)
    adaptation/kl_pre_post            mean_n mean_{t,k} KL(π_θ(·|s) ‖ π_φn(·|s)), s from the
                                      post-update batch (how far adaptation moves the policy)
    success/pre_update, _post_update  fraction of episodes that succeeded (families reporting
                                      success only)
    adaptation/step_size, _step_size_i  meta-learned step sizes (learn_step_size): the scalar,
                                      the mean of the per-parameter ones, or alpha_i of step i

so that a collapse of exploration or of the inner step is visible in any run.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from maml_rl.inner import PER_STEP_PREFIX
from maml_rl.policy import Categorical, forward, kl
from maml_rl.returns import masked_mean
from maml_rl.types import Batch, Params

HALF_LOG_2_PI_E = 0.5 * math.log(2 * math.pi * math.e)


def exploration(
    theta: Params, policy: nn.Module | None = None, batch: Batch | None = None
) -> dict[str, float]:
    """log-std statistics and entropy of a Gaussian policy's θ; for a policy without a
    state-independent ``log_std`` (categorical, custom), the mean entropy of π_θ over the
    states of `batch` [T, N, K, ...] that `policy` sampled (nothing without them)."""
    log_std = theta.get("log_std")
    if log_std is not None:
        return {
            "policy/log_std_mean": float(log_std.mean()),
            "policy/log_std_min": float(log_std.min()),
            "policy/log_std_max": float(log_std.max()),
            "policy/entropy": float((log_std + HALF_LOG_2_PI_E).sum()),
        }
    if policy is None or batch is None:
        return {}
    with torch.no_grad():
        dist = forward(policy, theta, batch.observations)
        if isinstance(dist, Categorical):
            log_p = torch.log_softmax(dist.logits, dim=-1)
            per_state = -(log_p.exp() * log_p).sum(dim=-1)
        else:
            per_state = (dist.log_std + HALF_LOG_2_PI_E).expand_as(dist.mean).sum(dim=-1)
        return {"policy/entropy": float(masked_mean(per_state, batch.mask))}


@torch.no_grad()
def adaptation(policy: nn.Module, theta: Params, phi: Params, post: Batch) -> dict[str, float]:
    """Size of the inner update: θ [*shape], φ [N, *shape], post batch [T, N, K, ...]."""
    squares = sum(
        (phi[name] - theta[name]).pow(2).flatten(start_dim=1).sum(dim=1) for name in theta
    )
    observations = post.observations.movedim(1, 0)  # [N, T, K, D]
    pre = forward(policy, theta, observations)
    adapted = forward(policy, phi, observations, per_task=True)
    divergence = masked_mean(kl(pre, adapted), post.mask.movedim(1, 0), dim=(1, 2))
    return {
        "adaptation/step_norm": float(torch.as_tensor(squares).sqrt().mean()),
        "adaptation/kl_pre_post": float(divergence.mean()),
    }


def step_sizes(step_size: Params) -> dict[str, float]:
    """The meta-learned step sizes (empty when fixed): ``adaptation/step_size`` (the scalar, or
    the mean over the per-parameter ones), or ``adaptation/step_size_i`` for step i (per step)."""
    if not step_size:
        return {}
    per_step = sorted(n for n in step_size if n.startswith(PER_STEP_PREFIX))
    if per_step:
        return {
            f"adaptation/step_size_{int(n[len(PER_STEP_PREFIX) :]) + 1}": float(step_size[n])
            for n in per_step
        }
    total = sum(float(a.sum()) for a in step_size.values())
    count = sum(a.numel() for a in step_size.values())
    return {"adaptation/step_size": total / count}


def success_metrics(batches: list[Batch]) -> dict[str, float]:
    """Success rates of the batches after 0..S inner steps, for families reporting success:
    ``success/pre_update`` (batch 0), ``success/after_step_i`` and ``success/post_update``
    (the last), each the fraction of the N·K episodes that succeeded at any valid step.
    Empty when the batches carry no success signal."""
    rates = [b.episode_success for b in batches]
    if any(rate is None for rate in rates):
        return {}
    values = [float(rate.mean()) for rate in rates]  # type: ignore[union-attr]
    metrics = {"success/pre_update": values[0], "success/post_update": values[-1]}
    metrics.update({f"success/after_step_{i}": v for i, v in enumerate(values[1:-1], start=1)})
    return metrics
