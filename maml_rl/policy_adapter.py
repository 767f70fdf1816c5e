"""Your own policy network, meta-trained like the built-in MLP.

The contract (config keys ``policy: module:callable`` and ``policy_kwargs``):

    net = callable(observation_space, action_space, **policy_kwargs)    # a torch.nn.Module
    net(observations) -> maml_rl.Normal(mean [B, A], log_std [B, A] or [A])   (Box actions)
                      -> maml_rl.Categorical(logits [B, n])                   (Discrete(n))

``observations`` is a float tensor [B, *shape] (the run's dtype and device) for a Box space of
any shape, a one-hot [B, n] for Discrete, a dict of these for a Dict space (observations.py).
``torch.distributions.Normal`` (or ``Independent(Normal, 1)``) and ``Categorical`` are accepted
too.

`PolicyAdapter` wraps the module so that the algorithm sees what it sees of the built-in MLP:
flat observations [*, D] in, a package distribution [*, A] out, evaluated with explicit
parameters (`torch.func.functional_call`, `vmap` over tasks). Its parameters are the module's,
named ``net.<name>``. `build_custom_policy` builds it (the module's initialisation draws from a
torch generator seeded from the run's seed, inside `torch.random.fork_rng`: deterministic, and
the global RNG is left as it was) and `check_policy` refuses, in one line, what the algorithm
cannot differentiate through: a wrong return type or shape, non-finite outputs, buffers that
change in `forward` (BatchNorm's running statistics), outputs detached from the parameters, or
a module that `torch.func.vmap` or a second derivative cannot run.

Such a policy takes the generic derivative path (curvature.py: autograd products through a
graph built once per meta-step); the built-in MLP keeps its closed-form one.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from functools import reduce
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from maml_rl.actions import distribution_shape
from maml_rl.errors import PolicyError
from maml_rl.imports import ImportTargetError, import_root, import_target
from maml_rl.observations import Observation, describe, is_flat, unflatten
from maml_rl.policy import Categorical, Distribution, Normal

PolicyFactory = Callable[..., nn.Module]

PREFIX = "net."
"""Parameter names of a custom policy inside the adapter: ``net.<the module's own name>``."""


def to_distribution(out: Any) -> Distribution:
    """The package distribution of a policy's output: `Normal` / `Categorical` as they are,
    ``torch.distributions`` Normal (or Independent of a Normal) as Normal(loc, log(scale)),
    Categorical as Categorical(logits). PolicyError for anything else."""
    if isinstance(out, Normal | Categorical):
        return out
    dist = out
    if isinstance(dist, torch.distributions.Independent):
        dist = dist.base_dist
    if isinstance(dist, torch.distributions.Normal):
        return Normal(dist.loc, torch.log(dist.scale))
    if isinstance(dist, torch.distributions.Categorical):
        return Categorical(dist.logits)
    raise PolicyError(
        f"forward returned {type(out).__name__}; return maml_rl.Normal(mean, log_std) for Box "
        "actions or maml_rl.Categorical(logits) for Discrete ones"
    )


class PolicyAdapter(nn.Module):
    """A user's policy module seen as the algorithm needs it (module docstring).

    forward: observations [*, D] (flat) -> Normal(mean [*, A], log_std [*, A]) or
    Categorical(logits [*, n]); the leading dims are folded into one batch dim B for `net`.
    """

    def __init__(
        self,
        net: nn.Module,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        target: str,
    ) -> None:
        super().__init__()
        self.net = net
        self.observation_space, self.action_space = observation_space, action_space
        self.target = target
        self.flat_dim = int(gym.spaces.flatdim(observation_space))

    def net_input(self, flat: Tensor) -> Observation:
        """flat observations [B, D] -> what `net` takes (observations.py)."""
        return flat if is_flat(self.observation_space) else unflatten(self.observation_space, flat)

    def forward(self, observations: Tensor) -> Distribution:
        lead = observations.shape[:-1]
        flat = observations.reshape(-1, self.flat_dim)
        dist = to_distribution(self.net(self.net_input(flat)))
        if isinstance(dist, Normal):
            mean = dist.mean.reshape(*lead, dist.mean.shape[-1])
            return Normal(mean, dist.log_std.expand(flat.shape[0], mean.shape[-1]).reshape_as(mean))
        return Categorical(dist.logits.reshape(*lead, dist.logits.shape[-1]))


def resolve_factory(target: str) -> PolicyFactory:
    """The callable named by `target` ('module:callable'); PolicyError if it cannot be found."""
    try:
        factory = import_target(target, "policy")
    except ImportTargetError as error:
        raise PolicyError(str(error)) from error
    if not callable(factory):
        raise PolicyError(f"policy {target} is {type(factory).__name__}, not a callable")
    return factory


def policy_import_root(target: str | None) -> str | None:
    """Where the module of a custom policy was found (recorded with the run), or None."""
    return None if target is None else import_root(target)


def build_custom_policy(
    target: str,
    kwargs: dict[str, Any],
    observation_space: gym.spaces.Space,
    action_space: gym.spaces.Space,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> PolicyAdapter:
    """Call the factory (under a torch RNG seeded from `generator`, the global RNG restored
    afterwards), wrap and check the module; PolicyError in one line if anything is wrong."""
    if not isinstance(action_space, gym.spaces.Box | gym.spaces.Discrete) or (
        isinstance(action_space, gym.spaces.Box) and len(action_space.shape) != 1
    ):
        raise PolicyError(f"policies need a flat Box or Discrete action space, got {action_space}")
    if isinstance(action_space, gym.spaces.Discrete) and action_space.start != 0:
        raise PolicyError(f"Discrete action spaces must start at 0, got {action_space}")
    factory = resolve_factory(target)
    seed = 0 if generator is None else int(torch.randint(2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net = factory(observation_space, action_space, **kwargs)
        except Exception as error:
            raise PolicyError(
                f"policy {target}({describe(observation_space)}, {action_space}, "
                f"**{kwargs}) raised {type(error).__name__}: {_first_line(error)}"
            ) from error
    if not isinstance(net, nn.Module):
        raise PolicyError(f"policy {target} returned {type(net).__name__}, not a torch.nn.Module")
    policy = PolicyAdapter(net, observation_space, action_space, target).to(device, dtype)
    check_policy(policy)
    return policy


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else ""


def check_policy(policy: PolicyAdapter, batch: int = 3) -> None:
    """Refuse (PolicyError, one line) a policy the algorithm cannot use: see the module doc."""
    name = policy.target
    params = dict(policy.named_parameters())
    if not params:
        raise PolicyError(f"policy {name} has no parameters to meta-train")
    first = next(iter(params.values()))
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(rng.uniform(-1.0, 1.0, (batch, policy.flat_dim)), dtype=first.dtype)
    obs = obs.to(first.device)
    buffers = {k: b.detach().clone() for k, b in policy.named_buffers()}

    def fail(what: str, error: BaseException | None = None) -> PolicyError:
        cause = "" if error is None else f": {type(error).__name__}: {_first_line(error)}"
        return PolicyError(f"policy {name}: {what}{cause}")

    failed = f"forward failed on observations of {describe(policy.observation_space)}"
    try:
        raw = policy.net(policy.net_input(obs))
    except Exception as error:
        raise fail(failed, error) from error
    try:
        dist = to_distribution(raw)
    except PolicyError as error:
        raise fail(str(error)) from error
    _check_outputs(policy, dist, batch, fail)
    try:
        dist = policy(obs)
    except Exception as error:
        raise fail(failed, error) from error
    changed = [
        k.removeprefix(PREFIX)
        for k, b in policy.named_buffers()
        if not torch.equal(b, buffers.get(k, b))
    ]
    if changed:
        raise fail(
            f"forward changed its buffers {changed} (BatchNorm running statistics?); the "
            "algorithm evaluates the policy many times with explicit parameters: use LayerNorm "
            "or GroupNorm, or BatchNorm with track_running_stats=False"
        )
    try:
        stacked = {k: torch.stack([p.detach()] * 2) for k, p in params.items()}
        pair = obs.expand(2, *obs.shape)
        per_task = vmap(lambda p, o: functional_call(policy, p, (o,)))(stacked, pair)
        torch.testing.assert_close(per_task[0][0], dist[0].detach(), rtol=1e-4, atol=1e-5)
    except PolicyError:
        raise
    except Exception as error:
        raise fail(
            "cannot be evaluated per task with torch.func.vmap (torch.distributions need "
            "validate_args=False; no in-place changes of parameters or data-dependent Python "
            "branches in forward)",
            error,
        ) from error
    _check_second_order(policy, params, obs, fail)


def _check_outputs(
    policy: PolicyAdapter, dist: Distribution, batch: int, fail: Callable[..., PolicyError]
) -> None:
    space = policy.action_space
    box = isinstance(space, gym.spaces.Box)
    kind, name = (Normal, "mean") if box else (Categorical, "logits")
    want = (batch, *distribution_shape(space)[:1])
    if not isinstance(dist, kind):
        raise fail(f"returns {type(dist).__name__} for the action space {space}; return "
                   f"maml_rl.{kind.__name__}({', '.join(kind._fields)})")  # fmt: skip
    shape = tuple(getattr(dist, name).shape)
    if shape != want:
        raise fail(f"{name} has shape {shape} for {batch} observations, expected {want}")
    if isinstance(dist, Normal) and tuple(torch.broadcast_shapes(dist.log_std.shape, want)) != want:
        raise fail(f"log_std has shape {tuple(dist.log_std.shape)}, expected {want} or "
                   f"[{want[1]}]")  # fmt: skip
    for field, value in zip(type(dist)._fields, dist, strict=True):
        if not torch.is_floating_point(value) or not bool(torch.isfinite(value).all()):
            raise fail(f"{field} is not finite floating point on test observations")
        if not value.requires_grad:
            raise fail(f"{field} does not depend on the parameters (detached, or no_grad?)")


def _check_second_order(
    policy: PolicyAdapter,
    params: Mapping[str, Tensor],
    obs: Tensor,
    fail: Callable[..., PolicyError],
) -> None:
    """The meta-gradient differentiates through a gradient step: a second derivative must run."""
    names = list(params)
    leaf = {k: p.detach().clone().requires_grad_(True) for k, p in params.items()}
    try:
        with torch.enable_grad():
            dist = functional_call(policy, leaf, (obs,))
            value = reduce(operator.add, [torch.tanh(t).pow(2).sum() for t in dist])
            grads = torch.autograd.grad(value, [leaf[k] for k in names], create_graph=True,
                                        allow_unused=True)  # fmt: skip
            if all(g is None for g in grads):
                raise fail("no parameter receives a gradient from the distribution")
            inner = reduce(operator.add, [g.pow(2).sum() for g in grads if g is not None])
            if inner.requires_grad:
                torch.autograd.grad(inner, [leaf[k] for k in names], allow_unused=True)
    except PolicyError:
        raise
    except Exception as error:
        raise fail("cannot be differentiated twice (the meta-gradient needs it)", error) from error
