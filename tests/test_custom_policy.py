"""The policy plug-in: custom modules meta-trained with exact derivatives (float64, against
finite differences and double backward), refused in one line when the algorithm cannot use
them, and equal to the built-in MLP when they are the same network."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_batch
from policy_helpers import LayerNormMLP, SmallCNN
from torch import nn

from maml_rl.build import Streams, build
from maml_rl.cli import main
from maml_rl.config import Config
from maml_rl.inner import first_order_gradients, init_step_size
from maml_rl.maml import (
    MetaParams,
    TaskData,
    _damped,
    _gauss_newton,
    _make_hvp,
    _post_distribution,
    collect,
    draw_seeds,
    meta_objective,
    meta_step,
)
from maml_rl.observations import FlatObservationFamily, unflatten
from maml_rl.policy import Distribution, detach, parameters_of
from maml_rl.policy_adapter import PREFIX, PolicyAdapter, build_custom_policy
from maml_rl.trpo import flat_grad

IMAGE = gym.spaces.Box(0, 255, (3, 3, 1), np.uint8)
BOX2 = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)


def make_custom(kind: str) -> tuple[PolicyAdapter, int]:
    """A float64 custom policy and its flat observation size."""
    torch.manual_seed(0)  # the tests' own init only; build_custom_policy forks the RNG
    net: nn.Module
    space: gym.spaces.Box
    if kind == "layernorm":
        net, space = LayerNormMLP(BOX2, BOX2, hidden=6), BOX2
    else:
        net, space = SmallCNN(IMAGE, BOX2), IMAGE
    policy = PolicyAdapter(net, space, BOX2, f"policy_helpers:{kind}").double()
    return policy, int(gym.spaces.flatdim(space))


def setup(
    kind: str, num_steps: int, first_order: bool = False, mode: str = "none", **kw: Any
) -> tuple[Config, PolicyAdapter, MetaParams, torch.Tensor, TaskData, Distribution]:
    cfg = Config(fast_lr=0.1, first_order=first_order, learn_step_size=mode, **kw)
    policy, obs_dim = make_custom(kind)
    theta = parameters_of(policy)
    step_size = init_step_size(theta, mode, 0.1)
    layout = MetaParams.of(theta, step_size)
    x0 = layout.flatten(theta, step_size)
    scale = 255.0 if kind == "cnn" else 1.0
    batches = [make_batch(10 + i, obs_dim=obs_dim) for i in (*range(num_steps), 100)]
    batches = [(dataclasses.replace(b, observations=b.observations.abs() * scale), a)
               for b, a in batches]  # fmt: skip
    data = TaskData(tuple(batches[:-1]), *batches[-1])
    with torch.no_grad():
        old = detach(_post_distribution(policy, layout, x0, data, cfg))
    return cfg, policy, layout, x0, data, old


KINDS = ["layernorm", "cnn"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_steps", [1, 2])
@pytest.mark.parametrize("mode", ["none", "per_parameter"])
def test_meta_gradient_equals_finite_difference(kind: str, num_steps: int, mode: str) -> None:
    cfg, policy, layout, x0, data, old = setup(kind, num_steps, mode=mode)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return meta_objective(policy, layout, x, data, old, cfg)[0]

    g = torch.Generator().manual_seed(1)
    x1 = x0 + 0.05 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    x = x1.clone().requires_grad_(True)
    grad = flat_grad(loss(x), [x])
    for _ in range(3):
        v = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        h = 1e-6
        with torch.no_grad():
            fd = (loss(x1 + h * v) - loss(x1 - h * v)).item() / (2 * h)
        assert (grad @ v).item() == pytest.approx(fd, rel=1e-6, abs=1e-9)


HVP_CASES = [
    (steps, mode, first_order)
    for steps in (1, 2)
    for mode, first_order in (
        ("none", False),
        ("none", True),
        ("scalar", False),
        ("per_parameter", False),
    )
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("num_steps", "mode", "first_order"), HVP_CASES)
def test_every_hvp_mode_equals_the_exact_product(
    kind: str, num_steps: int, mode: str, first_order: bool
) -> None:
    """Gauss-Newton (the generic autograd path) to 1e-8 and finite differences to 1e-3 of the
    double-backward product of the meta-KL at x0."""
    cfg, policy, layout, x0, data, old = setup(kind, num_steps, first_order, mode, cg_damping=0.0)
    frozen = None
    if first_order:
        theta, steps = layout.unflatten(x0)
        frozen = first_order_gradients(policy, theta, data.inner, [steps or 0.1] * num_steps)

    def kl_fn(y: torch.Tensor) -> torch.Tensor:
        return meta_objective(policy, layout, y, data, old, cfg, frozen)[1]

    exact = _make_hvp(kl_fn, x0.clone().requires_grad_(True), None, cfg)
    products = {
        "gauss_newton": _damped(
            _gauss_newton(policy, layout, x0, data, old, cfg, frozen), layout, cfg
        ),
        "finite_difference": _make_hvp(
            kl_fn, x0.clone().requires_grad_(True), None,
            dataclasses.replace(cfg, hvp="finite_difference"),
        ),
    }  # fmt: skip
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        v = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        expected = exact(v)
        assert expected.norm() > 0
        for name, tolerance in (("gauss_newton", 1e-8), ("finite_difference", 1e-3)):
            error = (products[name](v) - expected).norm() / expected.norm()
            assert error.item() < tolerance, name


def test_the_generic_path_is_taken_for_a_custom_policy() -> None:
    cfg, policy, layout, x0, data, old = setup("layernorm", 1)
    hvp = _gauss_newton(policy, layout, x0, data, old, cfg, None)
    assert not getattr(hvp, "closed_form", True)


def test_image_and_dict_observations_reach_the_policy_in_their_shape() -> None:
    space = gym.spaces.Dict({"image": IMAGE, "goal": gym.spaces.Discrete(3)})
    sample = space.sample()
    flat = torch.as_tensor(gym.spaces.flatten(space, sample), dtype=torch.float64)[None]
    restored = unflatten(space, flat)
    assert isinstance(restored, dict)
    assert restored["image"].shape == (1, 3, 3, 1)
    assert torch.equal(restored["image"][0], torch.as_tensor(sample["image"], dtype=torch.float64))
    assert restored["goal"][0].argmax().item() == sample["goal"]


def test_a_custom_policy_is_initialised_from_the_seed_without_touching_the_global_rng() -> None:
    before = torch.random.get_rng_state()

    def built(seed: int) -> PolicyAdapter:
        return build_custom_policy(
            "policy_helpers:LayerNormMLP", {"hidden": 8}, BOX2, BOX2,
            torch.Generator().manual_seed(seed), torch.device("cpu"), torch.float32,
        )  # fmt: skip

    a, b, c = built(1), built(1), built(2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    first = "body.0.weight"
    assert not torch.equal(a.net.get_parameter(first), c.net.get_parameter(first))
    assert set(parameters_of(a)) == {PREFIX + k for k in parameters_of(a.net)}


REFUSED = {
    "BatchNormMLP": "changed its buffers",
    "ReturnsTensor": "return maml_rl.Normal",
    "WrongShape": "mean has shape (3, 4)",
    "Detached": "does not depend on the parameters",
    "not_a_module": "not a torch.nn.Module",
    "Missing": "has no attribute 'Missing'",
}


@pytest.mark.parametrize(("name", "message"), REFUSED.items())
def test_policies_the_algorithm_cannot_use_are_refused_in_one_line(
    name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "navigation", "--out", str(tmp_path / "run"), "--no-progress",
            "--set", f"policy=policy_helpers:{name}", "meta_batch_size=2", "fast_batch_size=2",
            "num_batches=1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_the_builtin_mlp_refuses_an_image_family_and_names_the_way_out() -> None:
    from maml_rl.build import build as build_run

    cfg = Config(env="policy_helpers:DictNavigation", meta_batch_size=2, fast_batch_size=2)
    with pytest.raises(
        Exception, match=r"built-in MLP policy needs a flat Box.*config key `policy"
    ):
        build_run(cfg, None)


def first_iteration(
    cfg: Config, theta: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], float, float, Any]:
    """Iteration 1 of `cfg` from seed 0, at the policy's own initial θ or at `theta` (its
    names without the custom policy's prefix): θ, the pre- and post-update mean returns, and
    the meta-step's info."""
    streams = Streams.from_seed(0)
    family, policy, sampler = build(cfg, streams.policy_init)
    own = parameters_of(policy)
    if theta is not None:
        own = {PREFIX + k: v.clone() for k, v in theta.items()}
        assert set(own) == set(parameters_of(policy))
    tasks = family.sample_tasks(cfg.meta_batch_size, streams.tasks)
    seeds = draw_seeds(streams.environments, cfg.num_steps + 1)
    data, _ = collect(sampler, own, tasks, [cfg.fast_lr], seeds, cfg)
    _, _, info = meta_step(policy, own, {}, data, cfg)
    sampler.close()
    pre = data.inner[0][0].episode_returns.mean().item()
    return own, pre, data.post.episode_returns.mean().item(), info


def assert_same_first_iteration(a: Any, b: Any, tight: bool) -> None:
    """Two `first_iteration` results: returns and surrogate to 1e-9 (float64) or float32
    rounding; in float64 also the KL, the step and the line search."""
    (_, pre_a, post_a, info_a), (_, pre_b, post_b, info_b) = a, b
    assert pre_a == pytest.approx(pre_b, rel=1e-9 if tight else 1e-5)
    assert post_a == pytest.approx(post_b, rel=1e-9 if tight else 1e-5)
    assert info_a.surrogate_before == pytest.approx(
        info_b.surrogate_before, abs=1e-9 if tight else 1e-6
    )
    if tight:
        for field in ("surrogate_after", "kl_after", "max_step_length", "grad_norm"):
            assert getattr(info_a, field) == pytest.approx(getattr(info_b, field), rel=1e-6)
        assert info_a.accepted == info_b.accepted
        assert info_a.line_search_steps == info_b.line_search_steps
    assert math.isfinite(info_b.grad_norm)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_builtin_mlp_as_a_custom_module_gives_the_same_first_iteration(dtype: str) -> None:
    """Same network, same parameters, same seeds (the custom module takes the generic
    derivative path): in float64 the returns, surrogate, KL and step of iteration 1 agree to
    1e-6; in float32 the returns agree to float32 rounding (the step is not compared there:
    10 CG iterations in float32 on products summed in another order move it by a few %)."""
    base = Config(
        meta_batch_size=4, fast_batch_size=5, num_batches=1, sampler="native", dtype=dtype
    )
    builtin = first_iteration(base)
    custom = dataclasses.replace(base, policy="policy_helpers:PlainMLP")
    assert_same_first_iteration(builtin, first_iteration(custom, builtin[0]), dtype == "float64")


@pytest.mark.parametrize("name", ["TorchNormalMLP", "ValidatingNormal", "IndependentNormalMLP"])
def test_a_torch_distributions_gaussian_gives_the_same_first_iteration(name: str) -> None:
    """docs/custom-policies.md: a torch.distributions Normal (with or without argument
    validation) or Independent(Normal, 1) is read as the same Gaussian as maml_rl.Normal: the
    same network returning either trains the same first iteration (float64). Three CG
    iterations: LayerNorm's scale invariance leaves the damped Fisher with condition number
    about 2e6 here, and ten iterations turn its products' 1e-16 differences (log of exp) into
    1e-6 in the step."""
    base = Config(
        meta_batch_size=4, fast_batch_size=5, num_batches=1, sampler="native", cg_iters=3,
        dtype="float64", policy="policy_helpers:LayerNormMLP", policy_kwargs={"hidden": 8},
    )  # fmt: skip
    reference = first_iteration(base)
    other = first_iteration(dataclasses.replace(base, policy=f"policy_helpers:{name}"))
    assert all(torch.equal(reference[0][k], other[0][k]) for k in reference[0])  # same init
    assert_same_first_iteration(reference, other, tight=True)


def test_dict_observations_are_flattened_for_every_gym_backend() -> None:
    from policy_helpers import DictNavigation

    family = DictNavigation(max_episode_steps=5)
    space = family.make_env().observation_space
    flat = FlatObservationFamily(family, space)
    assert flat.make_env().observation_space.shape == (3,)
    assert not hasattr(flat, "make_batch_env")  # the wrapped family's is not flat


OPTIONS = {
    "lvc": ["meta_gradient=lvc"],
    "emaml": ["meta_gradient=emaml"],
    "dice": ["meta_gradient=dice"],
    "exact": ["hvp=exact"],
    "finite_difference": ["hvp=finite_difference"],
    "first_order": ["first_order=true"],
    "two_steps_meta_sgd": ["num_steps=2", "learn_step_size=per_parameter"],
    "promp": ["outer=promp", "meta_gradient=lvc"],
    "sync": ["sampler=sync"],
    "async": ["sampler=async"],
    "procs": ["sampler=procs"],
    "float64": ["dtype=float64"],
}


@pytest.mark.parametrize("option", OPTIONS)
def test_every_algorithm_option_trains_a_custom_policy(option: str, tmp_path: Path) -> None:
    """One iteration per option (tiny sizes) with the LayerNorm policy, then evaluate and
    resume from the run directory: the recorded policy is rebuilt."""
    run = tmp_path / "run"
    argv = ["train", "navigation", "--out", str(run), "--no-progress", "--set",
            "policy=policy_helpers:LayerNormMLP", "policy_kwargs={hidden: 8}",
            "meta_batch_size=2", "fast_batch_size=2", "num_batches=1",
            "env_kwargs={max_episode_steps: 10}", *OPTIONS[option]]  # fmt: skip
    assert main(argv) == 0
    assert main(["train", "--resume", str(run), "--set", "num_batches=2", "--no-progress"]) == 0
    from maml_rl.evaluate import load_run

    loaded = load_run(run)
    assert loaded.cfg.policy == "policy_helpers:LayerNormMLP" and loaded.iteration == 1
    assert all(name.startswith(PREFIX) for name in loaded.theta)
    assert all(bool(torch.isfinite(p).all()) for p in loaded.theta.values())


def test_ray_samples_a_custom_policy_like_the_local_sampler() -> None:
    pytest.importorskip("ray")
    from maml_rl.ray_sampler import RaySampler

    cfg = Config(policy="policy_helpers:LayerNormMLP", meta_batch_size=2, fast_batch_size=2,
                 env_kwargs={"max_episode_steps": 5})  # fmt: skip
    family, policy, local = build(cfg, torch.Generator().manual_seed(0))
    theta = parameters_of(policy)
    tasks = family.sample_tasks(2, np.random.default_rng(0))
    expected = local.sample(theta, tasks, seed=3, per_task=False)
    remote = RaySampler(family, policy, 2, torch.device("cpu"), torch.float32, num_actors=2)
    try:
        batch = remote.sample(theta, tasks, seed=3, per_task=False)
    finally:
        remote.close()
        local.close()
    torch.testing.assert_close(batch.rewards, expected.rewards)


@pytest.mark.parametrize("sampler", ["sync", "procs"])
def test_a_dict_observation_family_trains_with_a_policy_that_takes_it(
    sampler: str, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = ["train", "navigation", "--out", str(run), "--no-progress", "--set",
            "env=policy_helpers:DictNavigation", "policy=policy_helpers:DictPolicy",
            "meta_batch_size=2",
            "fast_batch_size=2", "num_batches=2", "env_kwargs={max_episode_steps: 6}",
            f"sampler={sampler}"]  # fmt: skip
    assert main(argv) == 0
    from maml_rl.evaluate import load_run

    assert load_run(run).iteration == 1


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        (["env=policy_helpers:DictNavigation"], False),  # the built-in MLP cannot read a Dict
        (["env=policy_helpers:DictNavigation", "policy=policy_helpers:DictPolicy"], True),
        (["policy=policy_helpers:BatchNormMLP"], False),
        (["policy=policy_helpers:LayerNormMLP"], True),
    ],
)
def test_check_says_what_train_says(
    overrides: list[str], ok: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`maml-rl check` runs train's own checks (build.preflight): the same verdict, and the
    same one-line message when it refuses."""
    sizes = ["meta_batch_size=2", "fast_batch_size=2", "num_batches=1",
             "env_kwargs={max_episode_steps: 6}"]  # fmt: skip
    checked = main(["check", "navigation", "--set", *overrides, *sizes])
    check_out = capsys.readouterr()
    trained = main(["train", "navigation", "--out", str(tmp_path / "run"), "--no-progress",
                    "--set", *overrides, *sizes])  # fmt: skip
    train_err = capsys.readouterr().err
    assert (checked == 0) is ok and (trained == 0) is ok
    if ok:
        assert "all checks passed" in check_out.out
    else:
        assert check_out.err.strip() == train_err.strip() and check_out.err.count("\n") == 1


@pytest.mark.parametrize("kind", ["normal", "categorical"])
def test_forward_mode_fisher_equals_double_backward(kind: str) -> None:
    """fisher.py's J^T M J t (M in closed form) equals the double-backward Hessian of the mean
    KL at equality, per task, in float64."""
    from policy_helpers import SoftmaxPolicy

    from maml_rl.curvature import _per_task, _SecondOrder
    from maml_rl.fisher import ForwardModeFisher
    from maml_rl.policy import forward, kl
    from maml_rl.returns import masked_mean

    torch.manual_seed(0)
    batch, _ = make_batch(3, obs_dim=2)
    net: nn.Module
    actions: gym.spaces.Space
    if kind == "normal":
        net, actions = LayerNormMLP(BOX2, BOX2, hidden=6), BOX2
    else:
        actions = gym.spaces.Discrete(4)
        net = SoftmaxPolicy(BOX2, actions)
    policy = PolicyAdapter(net, BOX2, actions, "policy_helpers:x").double()
    n = batch.num_tasks
    g = torch.Generator().manual_seed(1)
    phi = {k: v.detach() + 0.1 * torch.randn(n, *v.shape, generator=g, dtype=v.dtype)
           for k, v in parameters_of(policy).items()}  # fmt: skip
    obs, _, _, weights = _per_task(batch, torch.zeros_like(batch.rewards))
    fisher = ForwardModeFisher(policy, phi, obs, weights)
    leaf = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    dist = forward(policy, leaf, batch.observations.movedim(1, 0), per_task=True)
    kl_n = masked_mean(kl(detach(dist), dist), batch.step_weights.movedim(1, 0), (1, 2))
    exact = _SecondOrder(leaf, kl_n)
    t = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in phi.items()}
    got, expected = fisher.product(t), exact.product(t)
    for name in phi:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12)
    assert any(float(v.abs().max()) > 1e-3 for v in expected.values())
