"""Linear feature baseline (Duan et al. 2016; rllab ``LinearFeatureBaseline``), batched over tasks.

Shapes: T time steps, N tasks, K trajectories per task, D observation dims, F = 2D + 4 features.

* ``observations``: ``[T, N, K, D]``
* ``returns``, ``mask``, values: ``[T, N, K]`` (mask 1.0 at valid steps, 0.0 after the end)
* weights: ``[N, F]``, one linear fit per task over its T·K valid rows.

Values at masked steps are never used: they are replaced by 0 with ``torch.where`` (not by
multiplication), so NaN/inf padding cannot leak into a fit. All functions are pure.
"""

from __future__ import annotations

import torch
from torch import Tensor

from maml_rl.returns import discounted_returns, gae, masked_normalize
from maml_rl.threads import torch_threads

__all__ = ["advantages", "features", "fit", "predict"]

OBS_CLIP = 10.0
"""Observations are clipped to [-OBS_CLIP, OBS_CLIP] before building features."""

TIME_SCALE = 100.0
"""The time feature is t = step_index / TIME_SCALE."""


def num_features(obs_dim: int) -> int:
    """Number of baseline features for observations of size ``obs_dim``: F = 2D + 4."""
    return 2 * obs_dim + 4


def _check_shapes(observations: Tensor, mask: Tensor) -> None:
    """Raises ``ValueError`` unless observations are ``[T, N, K, D]`` and mask ``[T, N, K]``."""
    if observations.dim() != 4:
        raise ValueError(f"observations must be [T, N, K, D], got {tuple(observations.shape)}")
    if tuple(mask.shape) != tuple(observations.shape[:3]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} != observations [T, N, K] "
            f"{tuple(observations.shape[:3])}"
        )


def features(observations: Tensor, mask: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Baseline features of every step.

    o = clip(obs, -10, 10),   t = step_index / 100
    φ = [o, o², t, t², t³, 1]   at valid steps,   φ = 0 at masked steps.

    Built in place in the one output tensor: its size (2D + 4 numbers per step, in float64 for
    the fit: 214 for the ant, twice the observations) is the largest of a batch's advantage
    computation, so no intermediate of that size is made.

    Args:
        observations: ``[T, N, K, D]``.
        mask: ``[T, N, K]`` validity.
        dtype: of the features; None: that of ``observations``.

    Returns:
        ``[T, N, K, F]`` features with F = 2D + 4.
    """
    _check_shapes(observations, mask)
    steps, n_tasks, n_traj, dim = observations.shape
    dtype = observations.dtype if dtype is None else dtype
    device = observations.device
    phi = torch.empty(steps, n_tasks, n_traj, 2 * dim + 4, dtype=dtype, device=device)
    obs = phi[..., :dim]
    obs.copy_(observations).clamp_(-OBS_CLIP, OBS_CLIP)
    torch.square(obs, out=phi[..., dim : 2 * dim])
    t = torch.arange(steps, dtype=dtype, device=device) / TIME_SCALE
    for i, column in enumerate((t, t.square(), t.pow(3), torch.ones_like(t))):
        phi[..., 2 * dim + i] = column.view(steps, 1, 1)
    return phi.masked_fill_((mask == 0).unsqueeze(-1), 0.0)


def _normal_equations(observations: Tensor, returns: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-task weighted normal equations in float64.

    G_n = Xₙᵀ Wₙ Xₙ,   b_n = Xₙᵀ Wₙ yₙ,   Wₙ = diag(mask of task n),

    where Xₙ is ``[T·K, F]`` (rows of task n) and yₙ is ``[T·K]``.

    Returns:
        ``G`` of shape ``[N, F, F]`` and ``b`` of shape ``[N, F]``, both float64.
    """
    x = features(observations, mask, torch.float64)  # rows of masked steps are 0: W X = X
    y = torch.where(mask != 0, returns.to(torch.float64), torch.zeros((), dtype=torch.float64))
    gram = torch.einsum("tnkf,tnkg->nfg", x, x)
    rhs = torch.einsum("tnkf,tnk->nf", x, y)
    return gram, rhs


def _solve_with_escalation(gram: Tensor, rhs: Tensor, reg_coeff: float, max_tries: int) -> Tensor:
    """Solves (Gₙ + regₙ I) wₙ = bₙ for every task n, raising regₙ by 10× on failure.

    A task is retried (alone with the other failing tasks) when its Cholesky factorisation
    fails or its solution is non-finite; after ``max_tries`` failures its weights are 0.

    Args:
        gram: ``[N, F, F]`` float64.
        rhs: ``[N, F]`` float64.
        reg_coeff: initial ridge coefficient reg.
        max_tries: number of attempts per task.

    Returns:
        ``[N, F]`` float64 weights, always finite.
    """
    n_tasks, n_feat = rhs.shape
    eye = torch.eye(n_feat, dtype=gram.dtype, device=gram.device)
    weights = torch.zeros_like(rhs)
    reg = torch.full((n_tasks,), reg_coeff, dtype=gram.dtype, device=gram.device)
    pending = torch.ones(n_tasks, dtype=torch.bool, device=gram.device)
    for _ in range(max_tries):
        idx = pending.nonzero().squeeze(-1)
        if idx.numel() == 0:
            break
        lhs = gram[idx] + reg[idx].view(-1, 1, 1) * eye
        chol, info = torch.linalg.cholesky_ex(lhs)
        sol = torch.cholesky_solve(rhs[idx].unsqueeze(-1), chol).squeeze(-1)
        ok = (info == 0) & torch.isfinite(sol).all(dim=-1)
        weights = weights.index_put((idx,), torch.where(ok.unsqueeze(-1), sol, weights[idx]))
        pending = pending.index_put((idx,), ~ok)
        reg = reg.index_put((idx,), torch.where(ok, reg[idx], 10.0 * reg[idx]))
    return weights


def fit(
    observations: Tensor,
    returns: Tensor,
    mask: Tensor,
    reg_coeff: float = 1e-5,
    max_tries: int = 10,
) -> Tensor:
    """Fits one linear baseline per task by ridge regression on its valid steps.

    (Xₙᵀ Wₙ Xₙ + reg·I) wₙ = Xₙᵀ Wₙ yₙ,   Wₙ = diag(mask of task n),

    with Xₙ the ``[T·K, F]`` features of task n and yₙ its ``[T·K]`` returns. The algebra is
    done in float64 with a batched Cholesky solve, on one torch thread: on wide inputs (the
    ant's 105 observations) torch splits the sums of Xᵀ W X by thread, and their rounding, which
    the solve amplifies to about 1e-4 in float32 weights, would depend on the thread count. A
    task whose factorisation fails or whose solution is non-finite is retried with reg
    multiplied by 10 (only the failing tasks), up to ``max_tries`` attempts in total; a task
    that still fails gets zero weights (prediction 0). Escalation cannot help when
    ``reg_coeff`` is 0.

    Args:
        observations: ``[T, N, K, D]``.
        returns: ``[T, N, K]`` regression targets (e.g. discounted returns).
        mask: ``[T, N, K]`` validity, 1 or 0; masked rows are excluded, even if non-finite.
        reg_coeff: initial ridge coefficient, >= 0.
        max_tries: maximum number of attempts per task, >= 1.

    Returns:
        ``[N, F]`` weights (F = 2D + 4) in the dtype of ``observations``; always finite.
    """
    _check_shapes(observations, mask)
    if tuple(returns.shape) != tuple(mask.shape):
        raise ValueError(f"returns shape {tuple(returns.shape)} != mask shape {tuple(mask.shape)}")
    if not reg_coeff >= 0.0 or reg_coeff == float("inf"):
        raise ValueError(f"reg_coeff must be finite and >= 0, got {reg_coeff}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    if not bool(((mask == 0) | (mask == 1)).all()):  # Wₙ X = X below needs a 0/1 mask
        raise ValueError("mask must hold 1 at valid steps and 0 at masked ones")
    with torch_threads(1):  # the sums' rounding would depend on the thread count otherwise
        gram, rhs = _normal_equations(observations, returns, mask)
        weights = _solve_with_escalation(gram, rhs, reg_coeff, max_tries)
    return weights.to(observations.dtype)


def predict(observations: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
    """Baseline values of every step.

    V_{t,n,k} = φ_{t,n,k} · w_n   at valid steps,   0 at masked steps.

    Args:
        observations: ``[T, N, K, D]``.
        weights: ``[N, F]`` from ``fit``.
        mask: ``[T, N, K]`` validity.

    Returns:
        ``[T, N, K]`` values in the dtype of ``observations``.
    """
    phi = features(observations, mask)
    values = torch.einsum("tnkf,nf->tnk", phi, weights.to(phi.dtype))
    return torch.where(mask != 0, values, torch.zeros_like(values))


def advantages(
    batch_observations: Tensor,
    rewards: Tensor,
    mask: Tensor,
    gamma: float,
    gae_lambda: float,
    normalize: bool = True,
    statistics_weights: Tensor | None = None,
    scale: str = "std",
) -> Tensor:
    """GAE advantages with a freshly fitted linear baseline, per task; no autograd.

    R = discounted_returns(r, m, γ);   w = fit(obs, R, m);   V = predict(obs, w, m)
    A = gae(r, V, m, γ, λ);   if normalize: A = masked_normalize(A, u, dim=(0, 2), scale)
    (per task: (A − μ) / (σ + 1e-8), or / (σ² + 1e-8) with scale "variance")

    with u the weights of the normalisation statistics: the mask (every valid step alike) or,
    e.g., `returns.episode_weights(m)` (mean and variance as means of per-episode means, as
    pytorch-maml-rl's ``weighted_normalize``).

    Args:
        batch_observations: ``[T, N, K, D]``.
        rewards: ``[T, N, K]``.
        mask: ``[T, N, K]`` validity.
        gamma: discount γ.
        gae_lambda: GAE parameter λ.
        normalize: standardise advantages per task over its valid steps.
        statistics_weights: ``[T, N, K]`` weights u of the normalisation's mean and variance,
            non-zero exactly where the mask is; None means the mask.
        scale: ``std`` or ``variance`` (`returns.masked_normalize`).

    Returns:
        ``[T, N, K]`` advantages (detached; 0 at masked steps), dtype of ``rewards``.
    """
    with torch.no_grad():
        obs = batch_observations.detach()
        rew = rewards.detach()
        m = mask.detach()
        returns = discounted_returns(rew, m, gamma)
        weights = fit(obs, returns, m)
        values = predict(obs, weights, m).to(rew.dtype)
        adv = gae(rew, values, m, gamma, gae_lambda)
        if normalize:
            u = m if statistics_weights is None else statistics_weights.detach()
            adv = masked_normalize(adv, u, dim=(0, 2), scale=scale)
    return adv
