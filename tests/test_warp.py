"""The MuJoCo Warp sampler backend on Warp's CPU device, against the C backends.

Skipped without the optional extra (``pip install "maml-rl[warp]"``), except the tests of the
message that says so. The session fixture `warp` compiles Warp's kernels once (about 60-90 s
on two cores when ~/.cache/warp is empty, ~10 s to load them from it), so no test pays it.

Tolerances (measured here, then about 4x): from identical states one env step agrees to
float32 round-off (observations 1e-4 abs + 1e-4 rel: velocities and contact forces come out of
Warp's float32 constraint solver; rewards 1e-5; terminations equal). Ant is compared with
elliptic friction cones in both backends: with the model's pyramidal cones, MuJoCo Warp (like
MJX) orients the friction pyramid of a plane-capsule contact by a fixed axis when the capsule
is within 30 degrees of the plane's normal, where MuJoCo C aligns it with the capsule's axis;
the two pyramids are different approximations of the friction cone (one Ant step from the same
state then differs by up to 5e-3 in qpos). Over 100-step episodes the float32 and float64
trajectories part, so returns are compared as means (`test_episode_returns_agree`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import mujoco
import numpy as np
import pytest
import torch

from maml_rl.cli import main
from maml_rl.logger import read_metrics
from maml_rl.policy import GaussianMLPPolicy, parameters_of
from maml_rl.sampler import Sampler
from maml_rl.tasks import TaskFamilyError, make_family
from maml_rl.types import Batch
from maml_rl.vector import resolved_backend

if TYPE_CHECKING:
    from maml_rl_envs.mujoco_base import MujocoFamily
    from maml_rl_envs.mujoco_batch import MujocoBatchEnv

HAVE_WARP = importlib.util.find_spec("mujoco_warp") is not None
needs_warp = pytest.mark.skipif(not HAVE_WARP, reason='needs pip install "maml-rl[warp]"')
FAMILIES = ["halfcheetah-vel", "halfcheetah-dir", "ant-vel", "ant-dir", "ant-goal"]


@pytest.fixture(scope="session")
def warp() -> float:
    """Compiles (or loads from ~/.cache/warp) the kernels of both robots once; the seconds."""
    pytest.importorskip("mujoco_warp")
    start = time.perf_counter()
    for name in ("halfcheetah-vel", "ant-vel"):
        family = cast("MujocoFamily", make_family(name, {}))
        env = family.make_batch_env(2, stepper="warp")
        env.reset(family.sample_tasks(2, np.random.default_rng(0)), seed=0)
        env.step(torch.zeros(2, family.action_space.shape[0]))
        env.close()
    return time.perf_counter() - start


def elliptic(env: MujocoBatchEnv, family: MujocoFamily) -> None:
    """Swap the simulations of `env` for ones of the family's model with elliptic cones."""
    from maml_rl_envs.mujoco_batch import ThreadStepper, mujoco_env
    from maml_rl_envs.warp_batch import WarpStepper

    robot = mujoco_env(family.make_gym_env())
    model, frame_skip = robot.model, int(robot.frame_skip)
    model.opt.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    if env.stepper == "warp":
        env.sim = WarpStepper(model, env.num_envs, frame_skip, True, torch.device("cpu"))
    else:
        env.sim = ThreadStepper(model, env.num_envs, frame_skip, 1, True)


@needs_warp
@pytest.mark.parametrize("name", FAMILIES)
def test_one_step_from_the_same_state_equals_the_c_backend(warp: float, name: str) -> None:
    """States along a C episode (contacts included), one step each from the same state."""
    family = cast("MujocoFamily", make_family(name, {}))
    num_envs = 6
    tasks = family.sample_tasks(num_envs, np.random.default_rng(1))
    c_env = family.make_batch_env(num_envs, stepper="threads", num_threads=1)
    w_env = family.make_batch_env(num_envs, stepper="warp")
    if family.contact_forces:
        elliptic(c_env, family)
        elliptic(w_env, family)
    c_obs, w_obs = c_env.reset(tasks, seed=7), w_env.reset(tasks, seed=7)
    assert isinstance(w_obs, torch.Tensor) and w_obs.dtype == torch.float32
    np.testing.assert_allclose(w_obs.numpy(), c_obs, atol=1e-6)  # float32 of the same state
    rng = np.random.default_rng(2)
    contact_seen = unhealthy_seen = False
    for t in range(8):
        actions = 10 * rng.standard_normal((num_envs, family.action_space.shape[0]))
        qpos, qvel = c_env.sim.qpos.copy(), c_env.sim.qvel.copy()
        if family.contact_forces and t == 7:
            qpos[0, 2] = 1.5  # the torso above the healthy range: terminates in both
        c_env.sim.reset(qpos, qvel)
        w_env.sim.reset(qpos, qvel)
        c_step = c_env.step(actions)
        w_step = w_env.step(torch.as_tensor(actions))
        assert all(isinstance(value, torch.Tensor) for value in w_step)
        np.testing.assert_allclose(w_step[0].numpy(), c_step[0], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(w_step[1].numpy(), c_step[1], atol=1e-5)
        np.testing.assert_array_equal(w_step[2].numpy(), c_step[2])
        np.testing.assert_array_equal(w_step[3].numpy(), c_step[3])
        if family.contact_forces:
            np.testing.assert_allclose(
                w_env.sim.cfrc_ext.numpy(), c_env.sim.cfrc_ext, atol=5e-3, rtol=1e-4
            )
            contact_seen |= bool(np.abs(c_env.sim.cfrc_ext).max() > 1.0)
            unhealthy_seen |= bool(c_step[2].any())
    c_env.close()
    w_env.close()
    if family.contact_forces:
        assert contact_seen and unhealthy_seen  # the comparison covered both


def sample(
    name: str, backend: str, seed: int, num_tasks: int = 2, k: int = 4, **kwargs: Any
) -> Batch:
    """One batch of a fixed policy (initialised from seed 0) on `backend`."""
    family = cast("MujocoFamily", make_family(name, kwargs))
    obs_dim, act_dim = family.observation_space.shape[0], family.action_space.shape[0]
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(obs_dim, act_dim, (32, 32), "tanh")
    sampler = Sampler(family, policy, k, backend=backend)
    tasks = family.sample_tasks(num_tasks, np.random.default_rng(3))
    batch = sampler.sample(parameters_of(policy), tasks, seed=seed, per_task=False)
    sampler.close()
    return batch


@needs_warp
def test_half_cheetah_episode_returns_agree_per_trajectory(warp: float) -> None:
    """100-step episodes, same seeds, same policy: every trajectory's return on warp is within
    1e-3 of the native backend's (measured 4e-5 on returns of about -0.5 +- 1; the float32 and
    float64 half-cheetahs do not part within an episode)."""
    warp_batch = sample("halfcheetah-dir", "warp", seed=11, k=8)
    c_batch = sample("halfcheetah-dir", "native", seed=11, k=8)
    assert warp_batch.rewards.shape == c_batch.rewards.shape == (100, 2, 8)
    warp_returns = (warp_batch.rewards * warp_batch.mask).sum(0)
    c_returns = (c_batch.rewards * c_batch.mask).sum(0)
    assert torch.allclose(warp_returns, c_returns, atol=1e-3), warp_returns - c_returns


@needs_warp
def test_ant_episode_returns_agree_in_the_mean(warp: float) -> None:
    """100-step Ant episodes, same seeds, same policy: Ant's contacts (and the pyramid
    orientation, see the module doc) make single trajectories part (measured: returns differ by
    up to 13 of about 70 +- 7), so the per-task mean returns over K = 8 must agree within 3
    standard errors of their difference (measured 0.3 and 0.5 where 3 s.e. is about 10;
    seed 12 against seed 11 on the C backend differs by 1.5 and 2.5)."""
    warp_batch = sample("ant-vel", "warp", seed=11, k=8)
    c_batch = sample("ant-vel", "native", seed=11, k=8)
    assert torch.equal(warp_batch.actions[0], c_batch.actions[0])  # same noise, same start
    warp_returns = (warp_batch.rewards * warp_batch.mask).sum(0)
    c_returns = (c_batch.rewards * c_batch.mask).sum(0)
    k = warp_returns.shape[-1]
    standard_error = ((warp_returns.var(-1) + c_returns.var(-1)) / k).sqrt()
    difference = (warp_returns.mean(-1) - c_returns.mean(-1)).abs()
    assert (difference < 3 * standard_error).all(), (difference, standard_error)


@needs_warp
def test_same_seed_same_batch_on_the_cpu_device(warp: float) -> None:
    first = sample("ant-dir", "warp", seed=5, max_episode_steps=10)
    again = sample("ant-dir", "warp", seed=5, max_episode_steps=10)
    other = sample("ant-dir", "warp", seed=6, max_episode_steps=10)
    for field in dataclasses.fields(first):
        a, b = getattr(first, field.name), getattr(again, field.name)
        assert (a is None and b is None) or torch.equal(a, b), field.name
    assert not torch.equal(first.observations, other.observations)


TINY = [
    "--set", "sampler=warp",
    "--set", "meta_batch_size=2",
    "--set", "fast_batch_size=2",
    "--set", "env_kwargs={max_episode_steps: 5}",
    "--set", "hidden_sizes=[16]",
    "--set", "cg_iters=3",
    "--no-progress",
]  # fmt: skip


@needs_warp
def test_resumed_run_is_bit_identical_and_evaluates(warp: float, tmp_path: Path) -> None:
    from maml_rl.evaluate import evaluate_run

    def train(out: str, *extra: str) -> int:
        return main(["train", "halfcheetah-dir", "--out", str(tmp_path / out), *TINY, *extra])

    assert train("full", "--set", "num_batches=3") == 0
    assert train("split", "--set", "num_batches=2") == 0
    resume = ["train", "--resume", str(tmp_path / "split"), "--set", "num_batches=3"]
    assert main([*resume, "--no-progress"]) == 0
    untimed = [
        [{key: value for key, value in row.items() if not key.startswith("time/")} for row in rows]
        for rows in (read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split"))
    ]
    assert len(untimed[0]) == 3 and untimed[0] == untimed[1]
    record = (tmp_path / "full" / "run.json").read_text()
    assert '"sampler": "warp"' in record
    evaluation = evaluate_run(tmp_path / "full", {"random": None}, 1, 2, eval_seed=3)
    assert evaluation is not None


def test_without_the_extra_sampler_warp_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("maml_rl.sampler.warp_installed", lambda: False)
    family = make_family("halfcheetah-vel", {})
    policy = GaussianMLPPolicy(17, 6, (8,), "tanh")
    with pytest.raises(TaskFamilyError, match=r'^sampler "warp" .*pip install "maml-rl\[warp\]"$'):
        Sampler(family, policy, 2, backend="warp")


def test_auto_picks_warp_only_on_cuda_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    family = make_family("halfcheetah-vel", {})
    navigation = make_family("navigation", {})
    monkeypatch.setattr("maml_rl.vector.warp_installed", lambda: True)
    assert resolved_backend(family, "auto", "cuda") == "warp"
    assert resolved_backend(family, "auto", "cpu") == "native"
    assert resolved_backend(navigation, "auto", "cuda") == "native"
    monkeypatch.setattr("maml_rl.vector.warp_installed", lambda: False)
    assert resolved_backend(family, "auto", "cuda") == "native"


@needs_warp
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_warp_on_cuda_keeps_the_batch_on_the_gpu_and_agrees_with_the_cpu() -> None:
    """On a GPU (pytest -m cuda): the batch is on the GPU, half-cheetah's trajectories agree
    with the C backend's (float32, not bit-deterministic there: Warp's atomics), and Ant runs."""
    family = make_family("halfcheetah-dir", {})
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, (32, 32), "tanh")
    tasks = family.sample_tasks(2, np.random.default_rng(3))
    on_gpu = Sampler(family, policy.to("cuda"), 8, device="cuda", backend="warp")
    gpu_batch = on_gpu.sample(parameters_of(policy), tasks, seed=11, per_task=False)
    on_gpu.close()
    assert gpu_batch.rewards.device.type == "cuda" and gpu_batch.rewards.shape == (100, 2, 8)
    c_batch = sample("halfcheetah-dir", "native", seed=11, k=8)
    gpu_returns = (gpu_batch.rewards * gpu_batch.mask).sum(0).cpu()
    c_returns = (c_batch.rewards * c_batch.mask).sum(0)
    assert torch.allclose(gpu_returns, c_returns, atol=1e-2), gpu_returns - c_returns
    ant = make_family("ant-vel", {"max_episode_steps": 20})
    policy = GaussianMLPPolicy(105, 8, (32, 32), "tanh").to("cuda")
    sampler = Sampler(ant, policy, 4, device="cuda", backend="warp")
    batch = sampler.sample(
        parameters_of(policy), ant.sample_tasks(3, np.random.default_rng(0)), 0, False
    )
    sampler.close()
    assert batch.observations.device.type == "cuda" and torch.isfinite(batch.observations).all()
