"""activations.tanh against torch.tanh: values, first and second derivatives, forward mode, vmap."""

from __future__ import annotations

from typing import cast

import pytest
import torch
from torch.func import jvp, vmap

from maml_rl.activations import Tanh, tanh


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def points(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normal draws, large magnitudes (saturation), tiny ones and exact zeros."""
    x = torch.randn(257, generator=gen(0), dtype=dtype) * 3
    extremes = torch.tensor([0.0, -0.0, 1e-12, -1e-9, 20.0, -20.0, 400.0, -400.0], dtype=dtype)
    return torch.cat([x, extremes])


def test_values_equal_tanh_in_float64() -> None:
    x = points()
    torch.testing.assert_close(tanh(x), torch.tanh(x), rtol=0, atol=1e-15)


def test_float32_error_stays_at_epsilon_level() -> None:
    x = torch.randn(100_000, generator=gen(1)) * 4
    error = (tanh(x).double() - torch.tanh(x.double())).abs().max()
    assert float(error) < 3e-7


def test_gradient_and_double_backward_equal_tanh() -> None:
    x = points().requires_grad_(True)
    grad_out = torch.randn(x.shape, generator=gen(2), dtype=x.dtype)
    ours = torch.autograd.grad(tanh(x), x, grad_out, create_graph=True)[0]
    ref = torch.autograd.grad(torch.tanh(x), x, grad_out, create_graph=True)[0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-14)
    # second derivative along v: d/dx [g (1 - tanh²)] = -2 g tanh (1 - tanh²)
    v = torch.randn(x.shape, generator=gen(3), dtype=x.dtype)
    second = torch.autograd.grad(ours, x, v)[0]
    t = torch.tanh(x.detach())
    torch.testing.assert_close(second, -2 * grad_out * v * t * (1 - t * t), rtol=0, atol=1e-13)


def test_gradcheck_and_gradgradcheck() -> None:
    x = torch.randn(6, generator=gen(4), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tanh, (x,))
    assert torch.autograd.gradgradcheck(tanh, (x,))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_forward_mode_equals_closed_form(requires_grad: bool) -> None:
    x = points().requires_grad_(requires_grad)
    v = torch.randn(x.shape, generator=gen(5), dtype=x.dtype)
    # without has_aux, jvp returns a pair (its annotation also allows a triple)
    value, tangent = cast(tuple[torch.Tensor, torch.Tensor], jvp(tanh, (x,), (v,)))
    t = torch.tanh(x.detach())
    torch.testing.assert_close(value.detach(), t, rtol=0, atol=1e-15)
    torch.testing.assert_close(tangent.detach(), v * (1 - t * t), rtol=0, atol=1e-15)


def test_vmap_with_gradients() -> None:
    x = torch.randn(4, 5, generator=gen(6), dtype=torch.float64, requires_grad=True)
    out = vmap(tanh)(x)
    torch.testing.assert_close(out, torch.tanh(x), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, 1 - torch.tanh(x.detach()) ** 2, rtol=0, atol=1e-15)


def test_module_is_an_nn_tanh() -> None:
    module = Tanh()
    assert isinstance(module, torch.nn.Tanh)
    x = points()
    torch.testing.assert_close(module(x), torch.tanh(x), rtol=0, atol=1e-15)


def test_nan_propagates() -> None:
    assert torch.isnan(tanh(torch.tensor([float("nan")]))).all()
