"""Fisher products of any policy: forward-mode Jacobian products and the Fisher of the
package's distributions in closed form (the generic path of ``hvp: gauss_newton``).

For task n with adapted parameters phi_n, let d_n(phi) be the distribution parameters on its
post-update samples i (Normal: mean μ_i [A] and log-std ρ_i [A]; Categorical: logits ℓ_i [A]),
J_n = ∂d_n/∂phi, and w_i the step weights (normalised, Σ_i w_i = 1 per task). The Hessian of
the mean KL between the policies before and after a step, at equality, is

    F_n = J_nᵀ M_n J_n,   M_n = ⊕_i w_i M_i,
    Normal:       M_i = diag(σ_i⁻²) on μ_i,  diag(2) on ρ_i           (σ_i = exp ρ_i)
    Categorical:  M_i = diag(p_i) - p_i p_iᵀ on ℓ_i                   (p_i = softmax ℓ_i)

(the same for KL(π ‖ π_old) and KL(π_old ‖ π): both are the Fisher there). A product F_n t is
one forward-mode pass (`torch.func.jvp`: J t), M in closed form, and one reverse pass through
a graph built once per meta-step (`torch.func.vjp`: Jᵀ u), instead of a double backward
through the KL's gradient. Tensors are per task: parameters [N, *shape], observations
[N, M, D], step weights [N, M].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from maml_rl.policy import Categorical, Normal
from maml_rl.types import Params


def forward_mode_works(policy: nn.Module, params: Params, obs: Tensor) -> bool:
    """Whether `torch.func.jvp` runs through `policy` (some operations have no forward-mode
    derivative), tried on one sample of the first task."""
    one = {k: p[0].detach() for k, p in params.items()}
    try:
        jvp(lambda p: tuple(functional_call(policy, p, (obs[0, :1],))), (one,),
            ({k: torch.zeros_like(v) for k, v in one.items()},))  # fmt: skip
    except (RuntimeError, NotImplementedError):
        return False
    return True


class ForwardModeFisher:
    """F_n t_n = J_nᵀ M_n J_n t_n for every task at once (module docstring).

    policy: any policy module (`policy.forward` semantics); params: phi [N, *shape];
    obs: [N, M, D]; step_weights: [N, M] (0 on padded steps).
    """

    def __init__(
        self, policy: nn.Module, params: Params, obs: Tensor, step_weights: Tensor
    ) -> None:
        self.params = {k: p.detach() for k, p in params.items()}

        def dist_params(p: Params) -> tuple[Tensor, ...]:
            return tuple(vmap(lambda q, o: functional_call(policy, q, (o,)))(p, obs))

        self.dist_params = dist_params
        pulled = vjp(dist_params, self.params)  # (outputs, pullback): torch's stubs say 3
        out, self._pullback = pulled[0], pulled[1]
        self.kind = type(functional_call(policy, {k: v[0] for k, v in self.params.items()},
                                         (obs[0, :1],)))  # fmt: skip
        total = step_weights.sum(1, keepdim=True).clamp_min(torch.finfo(step_weights.dtype).tiny)
        weights = (step_weights / total).unsqueeze(-1)  # [N, M, 1]
        if self.kind is Normal:
            _, log_std = out
            self.metric = (weights * torch.exp(-2.0 * log_std).detach(), 2.0 * weights)
        elif self.kind is Categorical:
            (logits,) = out
            self.weights, self.probabilities = weights, torch.softmax(logits.detach(), -1)
        else:  # pragma: no cover - policies return the package's distributions
            raise TypeError(f"no closed-form Fisher for {self.kind.__name__}")

    def product(self, t: Params) -> Params:
        """∇²KL_n t_n for t [N, *shape] (per task)."""
        tangent = jvp(self.dist_params, (self.params,), (t,))[1]
        cotangent = self._metric(tangent)
        (grads,) = self._pullback(cotangent)
        return grads

    def _metric(self, tangent: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if self.kind is Normal:
            return tuple(m * d for m, d in zip(self.metric, tangent, strict=True))
        (d_logits,) = tangent
        p = self.probabilities
        return (self.weights * (p * d_logits - p * (p * d_logits).sum(-1, keepdim=True)),)
