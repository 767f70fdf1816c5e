"""MLP policies evaluated with explicit parameters, and free functions on their distributions.

A policy module maps observations to distribution parameters; it never samples or holds
optimiser state. Adapted parameters are passed explicitly through `forward`:

    dist = forward(policy, params, obs)        # params: shared [*shape] or per-task [N, *shape]

Distributions are named tuples (pytrees), so they pass through `torch.func.vmap`:
`Normal(mean, log_std)` for continuous actions, `Categorical(logits)` for discrete ones.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from maml_rl.activations import Tanh
from maml_rl.types import Params

NONLINEARITIES: dict[str, type[nn.Module]] = {
    "tanh": Tanh,  # nn.Tanh by a faster CPU kernel (activations.py)
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class Normal(NamedTuple):
    """Diagonal Gaussian: mean [*, A], log_std [*, A] (broadcast to the mean's shape).

    What a policy returns for Box actions:

    >>> maml_rl.Normal(mean=torch.zeros(5, 2), log_std=torch.full((2,), -0.5))  # doctest: +SKIP
    """

    mean: Tensor
    log_std: Tensor


class Categorical(NamedTuple):
    """Categorical over A actions: unnormalised logits [*, A].

    What a policy returns for Discrete actions:

    >>> maml_rl.Categorical(logits=torch.zeros(5, 4))  # doctest: +SKIP
    """

    logits: Tensor


Distribution = Normal | Categorical


def _mlp(
    in_dim: int,
    out_dim: int,
    hidden_sizes: tuple[int, ...],
    nonlinearity: str,
    generator: torch.Generator | None,
) -> nn.Sequential:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"unknown nonlinearity {nonlinearity!r}; choose one of {sorted(NONLINEARITIES)}"
        )
    layers: list[nn.Module] = []
    sizes = (in_dim, *hidden_sizes)
    for size_in, size_out in pairwise(sizes):
        layers += [nn.Linear(size_in, size_out), NONLINEARITIES[nonlinearity]()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class GaussianMLPPolicy(nn.Module):
    """Gaussian policy: mean = MLP(obs), state-independent log-std (init log(init_std)).

    obs [*, obs_dim] -> Normal(mean [*, act_dim], log_std [*, act_dim]).
    Weights xavier-uniform, biases zero (REFERENCE: rllab / pytorch-maml-rl initialisation).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...] = (64, 64),
        nonlinearity: str = "tanh",
        init_std: float = 1.0,
        min_std: float = 1e-6,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.mean = _mlp(obs_dim, act_dim, hidden_sizes, nonlinearity, generator)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.min_log_std = math.log(min_std)

    def forward(self, obs: Tensor) -> Normal:
        mean = self.mean(obs)
        log_std = self.log_std.clamp(min=self.min_log_std).expand_as(mean)
        return Normal(mean, log_std)


class CategoricalMLPPolicy(nn.Module):
    """Categorical policy: logits = MLP(obs); obs [*, obs_dim] -> Categorical(logits [*, n])."""

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        hidden_sizes: tuple[int, ...] = (64, 64),
        nonlinearity: str = "tanh",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.num_actions = obs_dim, num_actions
        self.logits = _mlp(obs_dim, num_actions, hidden_sizes, nonlinearity, generator)

    def forward(self, obs: Tensor) -> Categorical:
        return Categorical(self.logits(obs))


Policy = GaussianMLPPolicy | CategoricalMLPPolicy


def build_policy(
    observation_space: gym.spaces.Space,
    action_space: gym.spaces.Space,
    hidden_sizes: tuple[int, ...],
    nonlinearity: str,
    init_std: float,
    generator: torch.Generator | None = None,
    min_std: float = 1e-6,
) -> Policy:
    """A Gaussian policy for a Box action space, a categorical one for a Discrete one.

    Observations must be a flat Box [obs_dim]; anything else raises ValueError naming the space.
    """
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"policies need a flat Box observation space, got {observation_space}")
    obs_dim = int(observation_space.shape[0])
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return GaussianMLPPolicy(
            obs_dim,
            int(action_space.shape[0]),
            hidden_sizes,
            nonlinearity,
            init_std,
            min_std,
            generator=generator,
        )
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalMLPPolicy(
            obs_dim, int(action_space.n), hidden_sizes, nonlinearity, generator=generator
        )
    raise ValueError(f"policies need a flat Box or Discrete action space, got {action_space}")


def parameters_of(policy: nn.Module) -> Params:
    """The module's own parameters as a detached name -> tensor dict (theta)."""
    return {name: p.detach().clone() for name, p in policy.named_parameters()}


def forward(policy: nn.Module, params: Params, obs: Tensor, per_task: bool = False) -> Distribution:
    """Evaluate `policy` with explicit `params`.

    per_task=False: params have the module's shapes; obs [*, obs_dim].
    per_task=True:  params are stacked [N, *shape]; obs [N, *, obs_dim]; the policy runs once,
                    each task with its own params: the MLP policies of this module as batched
                    matrix products (`per_task_mlp`), any other module vectorised over tasks
                    with `torch.func.vmap`.
    """
    if not per_task:
        return functional_call(policy, params, (obs,))
    if type(policy) is GaussianMLPPolicy and _plain(policy.mean):
        mean = per_task_mlp(policy.mean, params, "mean.", obs)
        log_std = params["log_std"].clamp(min=policy.min_log_std)
        shape = (log_std.shape[0],) + (1,) * (mean.dim() - 2) + (log_std.shape[-1],)
        return Normal(mean, log_std.view(shape).expand_as(mean))
    if type(policy) is CategoricalMLPPolicy and _plain(policy.logits):
        return Categorical(per_task_mlp(policy.logits, params, "logits.", obs))
    return vmap(lambda p, o: functional_call(policy, p, (o,)))(params, obs)


def _plain(mlp: nn.Sequential) -> bool:
    """Whether every layer is a Linear or has no parameters (an elementwise activation)."""
    return all(isinstance(m, nn.Linear) or not any(True for _ in m.parameters()) for m in mlp)


def per_task_mlp(mlp: nn.Sequential, params: Params, prefix: str, obs: Tensor) -> Tensor:
    """`mlp` on obs [N, *, D] with task n's weights params[prefix + "i.weight"][n]: each Linear
    is z = h Wᵀ + b as one batched product over tasks (`torch.baddbmm`), [N, *, out].

    Twice as fast as `vmap(functional_call)` on a sampler step of 800 observations (0.43 ms
    against 1.0 ms, half-cheetah's 64x64 policy, one thread) and equal to it up to rounding.
    """
    h = obs.reshape(obs.shape[0], -1, obs.shape[-1])
    for index, module in enumerate(mlp):
        if isinstance(module, nn.Linear):
            weight, bias = params[f"{prefix}{index}.weight"], params[f"{prefix}{index}.bias"]
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        else:
            h = module(h)
    return h.reshape(*obs.shape[:-1], h.shape[-1])


def log_prob(dist: Distribution, actions: Tensor) -> Tensor:
    """Log-likelihood of actions, summed over action dimensions.

    Normal: log π(a) = Σ_i [-(a_i - μ_i)² / (2σ_i²) - log σ_i - ½ log 2π], actions [*, A] -> [*].
    Categorical: log softmax(logits)[a], actions [*] (integer) -> [*].
    """
    if isinstance(dist, Normal):
        z = (actions - dist.mean) * torch.exp(-dist.log_std)
        return (-0.5 * z.pow(2) - dist.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    logp = torch.log_softmax(dist.logits, dim=-1)
    return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def kl(p: Distribution, q: Distribution) -> Tensor:
    """KL(p ‖ q) per sample, summed over action dimensions: [*].

    Normal: Σ_i [log σq_i - log σp_i + (σp_i² + (μp_i - μq_i)²) / (2σq_i²) - ½].
    Categorical: Σ_a p(a) (log p(a) - log q(a)).
    """
    if isinstance(p, Normal) and isinstance(q, Normal):
        var_ratio = torch.exp(2 * (p.log_std - q.log_std))
        mean_term = (p.mean - q.mean).pow(2) * torch.exp(-2 * q.log_std)
        return (q.log_std - p.log_std + 0.5 * (var_ratio + mean_term) - 0.5).sum(-1)
    if isinstance(p, Categorical) and isinstance(q, Categorical):
        logp, logq = torch.log_softmax(p.logits, -1), torch.log_softmax(q.logits, -1)
        return (logp.exp() * (logp - logq)).sum(-1)
    raise TypeError(f"kl between {type(p).__name__} and {type(q).__name__}")


def sample(dist: Distribution, noise: Tensor) -> Tensor:
    """Actions from pre-drawn noise (`action_noise`), shaped like the distribution's parameters.

    Normal: a = mean + exp(log_std) · ε, ε ~ N(0, 1) [*, A]. Categorical (Gumbel-max):
    a = argmax(logits + g), g ~ Gumbel(0, 1) [*, A], giving integer actions [*].
    """
    if isinstance(dist, Normal):
        return dist.mean + noise * dist.log_std.exp()
    return torch.argmax(dist.logits + noise, dim=-1)


def action_noise(
    dist_type: type[Normal] | type[Categorical],
    shape: tuple[int, ...],
    seed: int,
    first_task: int,
    num_tasks: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Noise for `sample` of `num_tasks` tasks, [S0, num_tasks, *shape] with shape = (S1, ...).

    Task n's noise comes from its own stream, seeded by (seed, first_task + n) through
    ``numpy.random.SeedSequence``: the same task index gets the same noise whichever process
    (or Ray actor) samples it and whatever other tasks it samples alongside. shape: (T, K, A)
    -> noise [T, N, K, A], standard normal for `Normal`, standard Gumbel for `Categorical`.
    """
    draws = []
    for n in range(first_task, first_task + num_tasks):
        state = np.random.SeedSequence([seed, n]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        if dist_type is Normal:
            draws.append(torch.randn(shape, generator=generator, dtype=dtype))
        else:
            uniform = torch.rand(shape, generator=generator, dtype=torch.float64)
            tiny = torch.finfo(torch.float64).tiny
            gumbel = -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-16)))
            draws.append(gumbel.to(dtype))
    return torch.stack(draws, dim=1)


def detach(dist: Distribution) -> Distribution:
    """The same distribution with every field detached from the graph."""
    return type(dist)(*(t.detach() for t in dist))
