"""Discounted returns, generalised advantage estimation and masked statistics.

Conventions (as in deepmind rlax ``multistep.py``, but time-major with padding):

* Time is always dim 0. ``rewards``, ``values`` and ``mask`` are ``[T, *B]`` with any batch
  dims (in practice ``[T, N, K]``: T steps, N tasks, K trajectories per task).
* ``mask`` is 1.0 at valid steps and 0.0 at padded steps after an episode ended; once 0 it
  stays 0 along time. Values of ``rewards``/``values`` at masked steps are ignored (they are
  replaced by 0 with ``torch.where``, so even NaN/inf padding cannot leak in).
* An episode ends at its last valid step and bootstraps with value 0 there (``m_T = 0``,
  ``V_T = 0``). This holds for termination *and* for time-limit truncation at the horizon:
  truncation is treated as the end of the episode, which is consistent with a baseline that
  has time features (the value of the last step of a finite-horizon episode is its reward).

All functions are pure (inputs are never mutated), differentiable, and work with any float
dtype and device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "WEIGHTINGS",
    "discounted_returns",
    "episode_weights",
    "gae",
    "loss_weights",
    "masked_mean",
    "masked_normalize",
    "td_errors",
]

Dims = int | tuple[int, ...] | None


def _check_time_major(name: str, x: Tensor, mask: Tensor) -> None:
    """Raises ``ValueError`` unless ``x`` is ``[T, *B]`` with the shape of ``mask``."""
    if x.dim() < 1:
        raise ValueError(f"{name} must have a time dimension (dim 0), got a scalar")
    if x.shape != mask.shape:
        raise ValueError(
            f"{name} shape {tuple(x.shape)} != mask shape {tuple(mask.shape)}; both are [T, *B]"
        )


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` where ``mask != 0``, else exactly 0 (non-finite padding does not propagate)."""
    return torch.where(mask != 0, x, torch.zeros_like(x))


def _shift_back(x: Tensor) -> Tensor:
    """``y_t = x_{t+1}`` for t < T-1 and ``y_{T-1} = 0``; shapes ``[T, *B] -> [T, *B]``."""
    return torch.cat([x[1:], torch.zeros_like(x[:1])], dim=0)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Masked discounted returns (reward-to-go).

    R_t = m_t (r_t + γ R_{t+1}),   R_T = 0.

    Returns are 0 at masked steps; an episode's return bootstraps with 0 after its last valid
    step (see the module docstring on truncation).

    Args:
        rewards: ``[T, *B]`` rewards r_t.
        mask: ``[T, *B]`` validity m_t (1.0 valid, 0.0 padding).
        gamma: discount γ.

    Returns:
        ``[T, *B]`` discounted returns R_t, same dtype/device as ``rewards``.
    """
    _check_time_major("rewards", rewards, mask)
    m = mask.to(rewards.dtype)
    r = _zero_masked(rewards, mask)
    running = torch.zeros_like(rewards[0])
    out: list[Tensor] = []
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = m[t] * (r[t] + gamma * running)
        out.append(running)
    if not out:
        return torch.zeros_like(rewards)
    return torch.stack(out[::-1], dim=0)


def td_errors(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Masked one-step temporal-difference errors.

    δ_t = m_t (r_t + γ m_{t+1} V_{t+1} − V_t),   m_T = 0, V_T = 0.

    Args:
        rewards: ``[T, *B]`` rewards r_t.
        values: ``[T, *B]`` state values V_t (baseline predictions).
        mask: ``[T, *B]`` validity m_t.
        gamma: discount γ.

    Returns:
        ``[T, *B]`` TD errors δ_t, 0 at masked steps.
    """
    _check_time_major("rewards", rewards, mask)
    _check_time_major("values", values, mask)
    m = mask.to(rewards.dtype)
    r = _zero_masked(rewards, mask)
    v = _zero_masked(values, mask)
    next_v = _shift_back(m * v)
    return m * (r + gamma * next_v - v)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation (Schulman et al. 2016), masked and time-major.

    δ_t = r_t + γ m_{t+1} V_{t+1} − V_t
    A_t = m_t (δ_t + γ λ m_{t+1} A_{t+1}),   m_T = 0, V_T = 0.

    Special cases: λ = 1 with V = 0 gives ``discounted_returns``; λ = 0 gives the one-step TD
    error m_t δ_t.

    Args:
        rewards: ``[T, *B]`` rewards r_t.
        values: ``[T, *B]`` state values V_t (baseline predictions).
        mask: ``[T, *B]`` validity m_t.
        gamma: discount γ.
        lam: GAE parameter λ.

    Returns:
        ``[T, *B]`` advantages A_t, 0 at masked steps.
    """
    deltas = td_errors(rewards, values, mask, gamma)
    m = mask.to(deltas.dtype)
    running = torch.zeros_like(deltas[0])
    out: list[Tensor] = []
    for t in range(deltas.shape[0] - 1, -1, -1):
        # m_{t+1} A_{t+1} == A_{t+1} because A is already 0 at masked steps.
        running = m[t] * (deltas[t] + gamma * lam * running)
        out.append(running)
    if not out:
        return torch.zeros_like(deltas)
    return torch.stack(out[::-1], dim=0)


def _reduce_dims(x: Tensor, dim: Dims) -> tuple[int, ...]:
    """Normalises ``dim`` (int, tuple or None = all dims) to a tuple of dims of ``x``."""
    if dim is None:
        return tuple(range(x.dim()))
    if isinstance(dim, int):
        return (dim,)
    return tuple(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Dims = None, keepdim: bool = False) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is non-zero.

    mean = Σ x·m / Σ m   over ``dim``;   mean = 0 where Σ m = 0 (not NaN).

    Args:
        x: tensor of any shape.
        mask: weights broadcastable to ``x`` (1.0 valid, 0.0 ignored). Values of ``x`` at
            zero-mask entries are ignored, even if non-finite.
        dim: dim or dims to reduce; ``None`` reduces all dims.
        keepdim: keep the reduced dims with size 1.

    Returns:
        ``x`` reduced over ``dim``, in ``x``'s dtype.
    """
    x_b, m_b = torch.broadcast_tensors(x, mask)
    m = m_b.to(x.dtype)
    dims = _reduce_dims(x_b, dim)
    num = torch.sum(_zero_masked(x_b, m_b) * m, dim=dims, keepdim=keepdim)
    den = torch.sum(m, dim=dims, keepdim=keepdim)
    nonzero = den != 0
    safe_den = torch.where(nonzero, den, torch.ones_like(den))
    return torch.where(nonzero, num / safe_den, torch.zeros_like(num))


def masked_normalize(
    x: Tensor,
    mask: Tensor,
    dim: int | tuple[int, ...],
    eps: float = 1e-8,
    scale: str = "std",
) -> Tensor:
    """Standardises ``x`` with masked statistics over ``dim``.

    μ = masked_mean(x, m, dim)
    σ = sqrt(masked_mean((x − μ)², m, dim))   (population std)
    y = m ≠ 0 ? (x − μ) / (σ + eps) : 0       (scale "std")
    y = m ≠ 0 ? (x − μ) / (σ² + eps) : 0      (scale "variance": Meta-World+'s convention)

    Used to normalise advantages ``[T, N, K]`` per task with ``dim=(0, 2)``.

    Args:
        x: tensor of any shape.
        mask: weights broadcastable to ``x`` (1.0 valid, 0.0 ignored).
        dim: dim or dims over which the statistics are taken.
        eps: added to σ (or σ²) to avoid division by zero.
        scale: ``std`` or ``variance``, what the centred values are divided by.

    Returns:
        tensor with the shape of ``x`` broadcast with ``mask``; 0 at masked entries.
    """
    x_b, m_b = torch.broadcast_tensors(x, mask)
    mean = masked_mean(x_b, m_b, dim=dim, keepdim=True)
    centred = _zero_masked(x_b - mean, m_b)
    var = masked_mean(centred.square(), m_b, dim=dim, keepdim=True)
    if scale == "variance":
        return _zero_masked(centred / (var + eps), m_b)
    if scale != "std":
        raise ValueError(f"unknown scale {scale!r}; choose std or variance")
    # sqrt has an infinite derivative at 0; keep the gradient finite for constant groups.
    positive = var > 0
    std = torch.where(positive, torch.sqrt(torch.where(positive, var, torch.ones_like(var))), 0.0)
    return _zero_masked(centred / (std + eps), m_b)


WEIGHTINGS = ("steps", "episodes")
"""How a mean over a task's steps weighs them: every valid step alike (``steps``) or every
episode alike, each averaged over its own length (``episodes``, pytorch-maml-rl's convention)."""


def episode_weights(mask: Tensor) -> Tensor:
    """Step weights that turn a masked mean over time and trajectories into a mean of
    per-episode means.

    w_{t,b} = m_{t,b} / L_b,   L_b = Σ_t m_{t,b}   (w = 0 for an empty episode)

    so that  Σ_{t,b} w x / Σ_{t,b} w = (1/B') Σ_b (1/L_b) Σ_t m_{t,b} x_{t,b}  over the B'
    non-empty episodes: an episode that ends early weighs as much as a full one.

    Args:
        mask: ``[T, *B]`` validity (time major).

    Returns:
        ``[T, *B]`` weights in the dtype of ``mask``.
    """
    if mask.dim() < 1:
        raise ValueError("mask must have a time dimension (dim 0), got a scalar")
    lengths = mask.sum(dim=0, keepdim=True)
    safe = torch.where(lengths > 0, lengths, torch.ones_like(lengths))
    return torch.where(lengths > 0, mask / safe, torch.zeros_like(mask))


def loss_weights(mask: Tensor, weighting: str) -> Tensor:
    """The step weights of a weighting in ``WEIGHTINGS``: the mask (``steps``) or
    `episode_weights` (``episodes``); ``[T, *B] -> [T, *B]``."""
    if weighting == "steps":
        return mask
    if weighting == "episodes":
        return episode_weights(mask)
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")
