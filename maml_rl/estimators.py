"""Meta-gradient estimators: how the meta-objective treats θ's pre-update sampling distribution.

The paper's objective is J(θ) = E_T E_{τ~π_θ} E_{τ'~π_φ(θ,τ)} R(τ'). Differentiating only
through φ(θ, τ) with τ held fixed (``maml``, the paper's code and pytorch-maml-rl) drops the
term from τ's distribution depending on θ: nothing rewards pre-update exploration, and the
inner loss's Hessian, which the meta-gradient uses through ∂φ/∂θ = I − α∇²L_in, is biased.

* ``maml``: the inner loss is REINFORCE's, L_in = −mean_w(log π_θ(a|s) · A).
* ``lvc`` (Rothfuss et al. 2019, ProMP, arXiv 1810.06784): the low-variance curvature
  objective L_in = −mean_w((π_θ(a|s) / ⊥π_θ(a|s)) · A). Same value of the gradient as
  REINFORCE at θ, but its Hessian gains the outer-product term

      ∇²L_lvc = ∇²L_maml − mean_w(A · ∇log π ∇log πᵀ),

  the curvature of the pre-update sampling distribution that MAML drops.
* ``emaml`` (Stadie et al. 2018, arXiv 1803.01118): REINFORCE's inner loss, plus the score
  term of the pre-update trajectories in the outer loss,

      L_emaml(θ) = −(1/N) Σ_n Ĝ_n · mean_w log π_θ(a|s)   over task n's pre-update steps,

  with Ĝ_n the task's post-update return standardised over the meta-batch (a baseline and a
  scale; the per-step mean makes its size comparable to the surrogate's), so the gradient
  credits pre-update trajectories with the return that adapting on them earned.

* ``dice`` (Foerster et al. 2018, arXiv 1802.05098, with the baseline of Mao et al. 2019): the
  inner objective, per trajectory, with the magic box ⊡(x) = exp(x − ⊥x),

      J_dice = Σ_t ⊡(Σ_{t'≤t} log π(a_t'|s_t')) γ^t r_t − Σ_t ⊡(log π(a_t|s_t)) γ^t b_t,

  whose derivatives of every order are unbiased estimates of those of the expected discounted
  return (the baseline term has expectation zero at every order). Its first derivative is the
  discounted policy gradient Σ_t γ^t ∇log π (R_t − b_t); the loss is −J_dice averaged over the K
  trajectories and divided by σ_A · T̄ (the advantages' standard deviation and the mean episode
  length, constants) so that a step size means what it means for the normalised REINFORCE
  loss. b is the linear feature baseline fitted to the batch's discounted returns.

Means ``mean_w`` use the batch's step weights (`Batch.step_weights`); DiCE sums over time by
definition.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from maml_rl.baseline import fit, predict
from maml_rl.inner import InnerObjective, reinforce_loss
from maml_rl.policy import forward, log_prob
from maml_rl.returns import discounted_returns, masked_mean
from maml_rl.types import Batch, Params

META_GRADIENTS = ("maml", "lvc", "emaml", "dice")


def lvc_loss(policy: nn.Module, params: Params, batch: Batch, advantages: Tensor) -> Tensor:
    """Per-task LVC inner losses [N]: −mean_w(exp(log π − ⊥log π) · A), params [N, *shape]."""
    dist = forward(policy, params, batch.observations.movedim(1, 0), per_task=True)
    logp = log_prob(dist, batch.actions.movedim(1, 0))  # [N, T, K]
    ratio = torch.exp(logp - logp.detach())
    weighted = ratio * advantages.detach().movedim(1, 0)
    return -masked_mean(weighted, batch.step_weights.movedim(1, 0), dim=(1, 2))


def magic_box(x: Tensor) -> Tensor:
    """⊡(x) = exp(x − ⊥x): 1 in value, ∇⊡ = ⊡ ∇x at every order (Foerster et al. 2018)."""
    return torch.exp(x - x.detach())


def dice_terms(batch: Batch, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """(γ^t r_t, γ^t b_t, scale) of a batch: [T, N, K], [T, N, K] (0 at masked steps) and [N].

    b: the per-task linear baseline fitted to the discounted returns; scale = σ_A · T̄ with σ_A
    the standard deviation of the advantages R − b over a task's valid steps and T̄ its mean
    episode length."""
    mask = batch.mask
    with torch.no_grad():
        returns = discounted_returns(batch.rewards, mask, gamma)
        values = predict(batch.observations, fit(batch.observations, returns, mask), mask)
        discount = gamma ** torch.arange(mask.shape[0], dtype=mask.dtype, device=mask.device)
        discount = discount.view(-1, 1, 1)
        rewards = torch.where(mask != 0, batch.rewards, torch.zeros_like(batch.rewards))
        advantages = (returns - values) * mask
        mean = masked_mean(advantages, mask, dim=(0, 2), keepdim=True)
        std = masked_mean((advantages - mean) ** 2 * mask, mask, dim=(0, 2)).sqrt()
        lengths = mask.sum(dim=(0, 2)) / mask.shape[2]
        scale = (std + 1e-8) * lengths.clamp(min=1.0)
    return discount * rewards * mask, discount * values * mask, scale


def dice_loss(
    policy: nn.Module, params: Params, batch: Batch, advantages: Tensor, gamma: float
) -> Tensor:
    """Per-task DiCE inner losses [N] (see the module docstring); `advantages` unused."""
    del advantages
    rewards, values, scale = dice_terms(batch, gamma)
    dist = forward(policy, params, batch.observations.movedim(1, 0), per_task=True)
    logp = log_prob(dist, batch.actions.movedim(1, 0)) * batch.mask.movedim(1, 0)  # [N, T, K]
    cumulative = torch.cumsum(logp, dim=1)
    objective = magic_box(cumulative) * rewards.movedim(1, 0) - magic_box(logp) * values.movedim(
        1, 0
    )
    return -objective.sum(dim=1).mean(dim=1) / scale


def inner_objective(meta_gradient: str, gamma: float = 0.99) -> InnerObjective:
    """The inner loss of an estimator in `META_GRADIENTS` (gamma: DiCE's discount)."""
    if meta_gradient not in META_GRADIENTS:
        raise ValueError(f"unknown meta_gradient {meta_gradient!r}; choose one of {META_GRADIENTS}")
    if meta_gradient == "dice":
        return functools.partial(dice_loss, gamma=gamma)
    return lvc_loss if meta_gradient == "lvc" else reinforce_loss


def standardised_returns(post: Batch) -> Tensor:
    """Ĝ [N]: each task's mean post-update return, standardised over the tasks (0 for one)."""
    returns = post.episode_returns.mean(dim=1)
    if returns.numel() < 2:
        return torch.zeros_like(returns)
    return (returns - returns.mean()) / (returns.std() + 1e-8)


def emaml_loss(policy: nn.Module, theta: Params, pre: Batch, post: Batch) -> Tensor:
    """E-MAML's score term (0-dim): −(1/N) Σ_n Ĝ_n · mean_w log π_θ(a|s) on pre batch [T, N, K]."""
    dist = forward(policy, theta, pre.observations)
    logp = log_prob(dist, pre.actions)  # [T, N, K]
    score = masked_mean(logp, pre.step_weights, dim=(0, 2))  # [N]
    return -(standardised_returns(post).detach() * score).mean()
