"""The inner loop: REINFORCE loss and policy-gradient adaptation steps on explicit parameters.

For N tasks at once, with per-task parameters stacked along a leading dimension:

    L_n(phi_n) = -(1 / Σ w) Σ_{t,k} w_{t,n,k} · log π_{phi_n}(a_{t,n,k} | s_{t,n,k}) · A_{t,n,k}
    phi_n'     = phi_n - alpha ⊙ ∇_{phi_n} L_n(phi_n)                    (Finn et al. 2017, Alg. 3)

The gradient keeps its graph (`create_graph=True`) for second-order MAML, or is detached for
first-order MAML. alpha is a fixed float, a learnable scalar, or learnable per parameter
(Meta-SGD, Li et al. 2017); learnable step sizes live in a `Params` dict trained by the outer step.
w are the batch's step weights (`Batch.step_weights`): the mask, or per-episode weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from maml_rl.policy import forward, log_prob
from maml_rl.returns import masked_mean
from maml_rl.types import Batch, Params

SCALAR_STEP_SIZE = "_scalar"
PER_STEP_PREFIX = "_step"
"""Keys of per-step step sizes: {"_step0": alpha_1, "_step1": alpha_2, ...}, 0-dim each."""

StepSize = float | Params
"""The step size of one inner step: a fixed float, or learnable ones: {"_scalar": 0-dim} or
{param name: param-shaped}."""

InnerObjective = Callable[[nn.Module, Params, Batch, Tensor], Tensor]
"""(policy, per-task params [N, *shape], batch [T, N, K, ...], advantages [T, N, K]) -> per-task
inner losses [N]: `reinforce_loss`, or another estimator's (`maml_rl.estimators`)."""


def init_step_size(theta: Params, mode: str, value: float, num_steps: int = 1) -> Params:
    """Learnable step sizes initialised at `value`: {} (fixed), one scalar, one scalar for each
    of `num_steps` inner steps (per_step), or one per parameter."""
    reference = next(iter(theta.values()))

    def scalar() -> Tensor:
        return torch.tensor(value, dtype=reference.dtype, device=reference.device)

    if mode == "none":
        return {}
    if mode == "scalar":
        return {SCALAR_STEP_SIZE: scalar()}
    if mode == "per_step":
        return {step_key(s): scalar() for s in range(max(1, num_steps))}
    if mode == "per_parameter":
        return {name: torch.full_like(p, value) for name, p in theta.items()}
    raise ValueError(f"unknown step-size mode {mode!r}")


def step_key(step: int) -> str:
    """The key of inner step `step`'s (0-based) learnable step size in per-step mode."""
    return f"{PER_STEP_PREFIX}{step}"


def is_per_step(step_size: Params) -> bool:
    """Whether `step_size` holds one learnable scalar per inner step."""
    return any(name.startswith(PER_STEP_PREFIX) for name in step_size)


def step_of(step_size: Params, step: int) -> Params:
    """The learnable step sizes of inner step `step` (0-based): in per-step mode
    {"_scalar": alpha_step} (a view, differentiable), past the last learned step the last
    one's; otherwise `step_size` itself (the same for every step)."""
    if not is_per_step(step_size):
        return step_size
    last = sum(1 for name in step_size if name.startswith(PER_STEP_PREFIX)) - 1
    return {SCALAR_STEP_SIZE: step_size[step_key(min(step, last))]}


def step_sizes_of(step_size: Params, fast_lr: float, num_steps: int) -> list[StepSize]:
    """The step sizes of inner steps 1..num_steps: fast_lr for every step when nothing is
    learned, else the learned ones (`step_of`)."""
    if not step_size:
        return [fast_lr] * num_steps
    return [step_of(step_size, s) for s in range(num_steps)]


def alpha_of(step_size: StepSize, name: str) -> float | Tensor:
    """The step size of parameter `name`: a float, a 0-dim tensor or a param-shaped tensor."""
    if isinstance(step_size, float | int):
        return float(step_size)
    if SCALAR_STEP_SIZE in step_size:
        return step_size[SCALAR_STEP_SIZE]
    return step_size[name]


def expand_to_tasks(theta: Params, num_tasks: int) -> Params:
    """Shared parameters as per-task ones: [*shape] -> [N, *shape] (a differentiable view)."""
    return {name: p.expand(num_tasks, *p.shape) for name, p in theta.items()}


def reinforce_loss(policy: nn.Module, params: Params, batch: Batch, advantages: Tensor) -> Tensor:
    """Per-task REINFORCE losses [N] for per-task params [N, *shape] on a Batch [T, N, K, ...].

    advantages: [T, N, K], treated as constants.
    """
    dist = forward(policy, params, batch.observations.movedim(1, 0), per_task=True)
    logp = log_prob(dist, batch.actions.movedim(1, 0))  # [N, T, K]
    weighted = logp * advantages.detach().movedim(1, 0)
    return -masked_mean(weighted, batch.step_weights.movedim(1, 0), dim=(1, 2))


def policy_gradients(
    policy: nn.Module,
    params: Params,
    batch: Batch,
    advantages: Tensor,
    create_graph: bool,
    objective: InnerObjective | None = None,
) -> Params:
    """Per-task gradients ∇_{phi_n} L_n(phi_n), [N, *shape] each; works under `torch.no_grad`.

    create_graph=True keeps their graph (second-order MAML); False returns them detached.
    """
    with torch.enable_grad():
        inputs = {
            name: p if p.requires_grad else p.detach().requires_grad_(True)
            for name, p in params.items()
        }
        losses = (objective or reinforce_loss)(policy, inputs, batch, advantages)
        grads = torch.autograd.grad(losses.sum(), list(inputs.values()), create_graph=create_graph)
    return dict(zip(inputs, grads, strict=True))


def apply_step(params: Params, grads: Params, step_size: StepSize) -> Params:
    """phi' = phi - alpha ⊙ grad, for every parameter (alpha broadcast over tasks)."""
    return {name: p - alpha_of(step_size, name) * grads[name] for name, p in params.items()}


def inner_step(
    policy: nn.Module,
    params: Params,
    batch: Batch,
    advantages: Tensor,
    step_size: StepSize,
    create_graph: bool,
    objective: InnerObjective | None = None,
) -> Params:
    """One policy-gradient step per task: phi_n' = phi_n - alpha ⊙ ∇ L_n(phi_n). Shapes [N, *].

    create_graph=True keeps the graph of the gradient (second-order MAML); False detaches the
    gradient (first-order MAML, and sampling-time adaptation). Works under `torch.no_grad`.
    """
    grads = policy_gradients(policy, params, batch, advantages, create_graph, objective)
    return apply_step(params, grads, step_size)


def adapt(
    policy: nn.Module,
    theta: Params,
    inner_data: Sequence[tuple[Batch, Tensor]],
    step_sizes: Sequence[StepSize],
    first_order: bool,
    **options: Any,
) -> Params:
    """Adapted parameters phi [N, *shape] after len(inner_data) inner steps from theta.

    With no inner data (plain TRPO: the pretrained and oracle baselines) phi is theta repeated
    for `num_tasks` tasks.

    inner_data[i] = (batch, advantages) sampled with the parameters after i steps;
    step_sizes[i] is the step size of step i. Differentiable w.r.t. theta and learnable steps.
    frozen_grads (first order only): use these inner gradients instead of recomputing them,
    so phi(x) = theta - Σ_i alpha_i ⊙ g_i is exactly the linear model first-order MAML
    differentiates (its Hessian-vector products then match the exact ones).
    options: frozen_grads, num_tasks, objective (as for `adaptation_path`).
    objective: the inner loss (default `reinforce_loss`); estimators whose losses share
    REINFORCE's gradient but not its Hessian (LVC) change only the second-order graph.
    """
    return adaptation_path(policy, theta, inner_data, step_sizes, first_order, **options)[-1]


def adaptation_path(
    policy: nn.Module,
    theta: Params,
    inner_data: Sequence[tuple[Batch, Tensor]],
    step_sizes: Sequence[StepSize],
    first_order: bool,
    frozen_grads: Sequence[Params] | None = None,
    num_tasks: int | None = None,
    objective: InnerObjective | None = None,
) -> list[Params]:
    """[phi_0 = theta per task, phi_1, ..., phi_S], each [N, *shape]: `adapt`'s every step
    (phi_i is the policy that sampled inner_data[i]). Arguments as for `adapt`."""
    if inner_data:
        num_tasks = inner_data[0][0].num_tasks
    elif num_tasks is None:
        raise ValueError("adapt needs num_tasks when there are no inner steps")
    path = [expand_to_tasks(theta, num_tasks)]
    for i, ((batch, advantages), step_size) in enumerate(zip(inner_data, step_sizes, strict=True)):
        if frozen_grads is not None:
            path.append(apply_step(path[-1], frozen_grads[i], step_size))
        else:
            path.append(
                inner_step(
                    policy, path[-1], batch, advantages, step_size, not first_order, objective
                )
            )
    return path


def first_order_gradients(
    policy: nn.Module,
    theta: Params,
    inner_data: Sequence[tuple[Batch, Tensor]],
    step_sizes: Sequence[StepSize],
    objective: InnerObjective | None = None,
) -> list[Params]:
    """The detached inner gradients g_i along the adaptation path from theta (for frozen_grads)."""
    params = {n: p.detach().expand(inner_data[0][0].num_tasks, *p.shape) for n, p in theta.items()}
    steps = [
        {n: a.detach() for n, a in s.items()} if isinstance(s, dict) else s for s in step_sizes
    ]
    grads: list[Params] = []
    for (batch, advantages), step_size in zip(inner_data, steps, strict=True):
        grads.append(policy_gradients(policy, params, batch, advantages, False, objective))
        params = apply_step(params, grads[-1], step_size)
    return grads
