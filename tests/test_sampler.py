"""Tests of `maml_rl.sampler.Sampler` on 2D navigation, and of `maml_rl.types.Batch`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maml_rl.policy import GaussianMLPPolicy, parameters_of
from maml_rl.sampler import Sampler, make_batch_env, task_chunk_size
from maml_rl.tasks import TaskFamily, TaskFamilyError
from maml_rl.types import Batch, Params
from maml_rl.vector import GymBatchEnv
from maml_rl_envs.navigation import (
    Navigation2D,
    Navigation2DBatch,
    Navigation2DEnv,
    NavigationTask,
)

DTYPE = torch.float64
TINY_LOG_STD = -10.0  # std ≈ 4.5e-5: actions are the mean up to ~1e-4
FAR = NavigationTask(goal=(0.5, 0.5))  # never reached by policies that keep y at 0


def make_policy(seed: int = 0, init_std: float = 1.0) -> tuple[GaussianMLPPolicy, Params]:
    policy = GaussianMLPPolicy(
        2, 2, (8, 8), "tanh", init_std=init_std, generator=torch.Generator().manual_seed(seed)
    ).to(DTYPE)
    return policy, parameters_of(policy)


def constant_params(
    policy: GaussianMLPPolicy, mean: tuple[float, float], log_std: float = TINY_LOG_STD
) -> Params:
    """Parameters whose mean is `mean` whatever the observation (last layer weight zero)."""
    params = parameters_of(policy)
    last = max(int(name.split(".")[1]) for name in params if name.startswith("mean."))
    params[f"mean.{last}.weight"] = torch.zeros_like(params[f"mean.{last}.weight"])
    params[f"mean.{last}.bias"] = torch.tensor(mean, dtype=DTYPE)
    params["log_std"] = torch.full((2,), log_std, dtype=DTYPE)
    return params


def stack(per_task: list[Params]) -> Params:
    return {name: torch.stack([p[name] for p in per_task]) for name in per_task[0]}


def make_sampler(family: TaskFamily, policy: GaussianMLPPolicy, k: int) -> Sampler:
    return Sampler(family, policy, trajectories_per_task=k, dtype=DTYPE)


class GenericOnly:
    """A navigation family without `make_batch_env`, forcing the generic GymBatchEnv path."""

    def __init__(self, family: Navigation2D) -> None:
        self._family = family
        self.max_episode_steps = family.max_episode_steps

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[NavigationTask]:
        return self._family.sample_tasks(n, rng)

    def make_env(self) -> Navigation2DEnv:
        return self._family.make_env()


def assert_mask_well_formed(batch: Batch) -> None:
    mask = batch.mask
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask[0] == 1).all(), "every episode has a first step"
    # never 1 after a 0: non-increasing along time
    assert (mask[1:] <= mask[:-1]).all()
    assert (batch.rewards[mask == 0] == 0).all()


# ----------------------------------------------------------------------------- shapes / mask


def test_batch_shapes_and_dtypes() -> None:
    family = Navigation2D()
    policy, theta = make_policy(0)
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    batch = make_sampler(family, policy, k=4).sample(theta, tasks, seed=1, per_task=False)
    assert isinstance(batch, Batch)
    assert batch.observations.shape == (100, 3, 4, 2)
    assert batch.actions.shape == (100, 3, 4, 2)
    assert batch.rewards.shape == (100, 3, 4)
    assert batch.mask.shape == (100, 3, 4)
    for tensor in (batch.observations, batch.actions, batch.rewards, batch.mask):
        assert tensor.dtype == DTYPE
        assert torch.isfinite(tensor).all()
    assert batch.num_tasks == 3
    assert_mask_well_formed(batch)
    # the episodes start at the origin and the first reward is -‖clip(a0) - goal‖
    assert (batch.observations[0] == 0).all()
    goals = torch.tensor([t.goal for t in tasks], dtype=DTYPE)[:, None, :]
    first = batch.actions[0].clamp(-0.1, 0.1)
    expected = -(first - goals).norm(dim=-1)
    torch.testing.assert_close(batch.rewards[0], expected, rtol=1e-6, atol=1e-6)


def test_horizon_follows_family() -> None:
    family = Navigation2D(max_episode_steps=13)
    policy, theta = make_policy(0)
    tasks = family.sample_tasks(2, np.random.default_rng(0))
    batch = make_sampler(family, policy, k=2).sample(theta, tasks, seed=0, per_task=False)
    assert batch.rewards.shape == (13, 2, 2)
    assert (batch.mask == 1).all()  # a random policy does not hit a goal this fast
    assert batch.num_steps == 13 * 4


def test_observations_follow_clipped_actions() -> None:
    family = Navigation2D(max_episode_steps=20)
    policy, theta = make_policy(3)
    tasks = [FAR, NavigationTask(goal=(-0.5, 0.4))]
    batch = make_sampler(family, policy, k=3).sample(theta, tasks, seed=5, per_task=False)
    moves = batch.observations[1:] - batch.observations[:-1]
    torch.testing.assert_close(moves, batch.actions[:-1].clamp(-0.1, 0.1), rtol=0, atol=1e-6)
    # init_std 1.0 ≫ 0.1: many actions really were clipped
    assert (batch.actions.abs() > 0.1).float().mean() > 0.5


def test_mask_covers_terminating_step_and_zero_after() -> None:
    family = Navigation2D()
    policy, _ = make_policy(0)
    params = constant_params(policy, (0.05, 0.0))
    # task 0 is reached after exactly 5 steps of 0.05; task 1 never (y stays 0)
    tasks = [NavigationTask(goal=(0.25, 0.0)), FAR]
    batch = make_sampler(family, policy, k=2).sample(params, tasks, seed=0, per_task=False)
    assert batch.rewards.shape[0] == 100
    assert_mask_well_formed(batch)
    expected = torch.zeros(100, dtype=DTYPE)
    expected[:5] = 1.0
    for j in range(2):
        torch.testing.assert_close(batch.mask[:, 0, j], expected, rtol=0, atol=0)
        assert (batch.mask[:, 1, j] == 1).all()
    # the terminating step's reward (≈ 0) is kept, and rewards after it are zero
    steps = torch.arange(5, dtype=DTYPE)
    torch.testing.assert_close(
        batch.rewards[:5, 0], -(0.25 - 0.05 * (steps + 1))[:, None].expand(5, 2), atol=1e-3, rtol=0
    )
    assert batch.rewards[4, 0].abs().max() < 1e-3
    assert batch.rewards[4, 0].abs().min() > 0  # not masked: a real (tiny) distance
    assert (batch.rewards[5:, 0] == 0).all()
    torch.testing.assert_close(
        batch.observations[:5, 0, :, 0], (0.05 * steps)[:, None].expand(5, 2), atol=1e-3, rtol=0
    )
    assert batch.num_steps == 2 * 5 + 2 * 100


def test_single_step_termination_shortens_batch() -> None:
    family = Navigation2D()
    policy, _ = make_policy(1)
    params = constant_params(policy, (0.05, 0.0))
    tasks = [NavigationTask(goal=(0.05, 0.0))] * 2
    batch = make_sampler(family, policy, k=3).sample(params, tasks, seed=2, per_task=False)
    assert batch.rewards.shape == (1, 2, 3)
    assert batch.observations.shape == (1, 2, 3, 2)
    assert (batch.mask == 1).all()
    assert (batch.observations == 0).all()
    torch.testing.assert_close(
        batch.actions, torch.tensor([0.05, 0.0], dtype=DTYPE).expand(1, 2, 3, 2), atol=1e-3, rtol=0
    )
    assert (batch.rewards < 0).all()
    assert (batch.rewards > -1e-3).all()
    assert batch.num_steps == 6


# ----------------------------------------------------------------------------- seeds


def test_same_seed_is_bit_identical() -> None:
    family = Navigation2D()
    policy, theta = make_policy(0)
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    a = make_sampler(family, policy, k=4).sample(theta, tasks, seed=11, per_task=False)
    sampler = make_sampler(family, policy, k=4)
    b = sampler.sample(theta, tasks, seed=11, per_task=False)
    c = sampler.sample(theta, tasks, seed=11, per_task=False)  # reused environments
    for x in (b, c):
        for name in ("observations", "actions", "rewards", "mask"):
            assert torch.equal(getattr(a, name), getattr(x, name)), name


def test_different_seed_gives_different_actions() -> None:
    family = Navigation2D()
    policy, theta = make_policy(0)
    tasks = family.sample_tasks(2, np.random.default_rng(0))
    sampler = make_sampler(family, policy, k=3)
    a = sampler.sample(theta, tasks, seed=0, per_task=False)
    b = sampler.sample(theta, tasks, seed=1, per_task=False)
    assert a.actions.shape == b.actions.shape
    # different everywhere, not just somewhere
    assert (a.actions[0] != b.actions[0]).all()
    assert not torch.equal(a.observations, b.observations)


def test_trajectories_of_one_task_differ() -> None:
    family = Navigation2D()
    policy, theta = make_policy(0)
    tasks = family.sample_tasks(1, np.random.default_rng(0))
    batch = make_sampler(family, policy, k=4).sample(theta, tasks, seed=3, per_task=False)
    first = batch.actions[0, 0]
    assert len({tuple(row.tolist()) for row in first}) == 4


def test_previous_tasks_do_not_leak_into_next_sample() -> None:
    family = Navigation2D()
    policy, theta = make_policy(0)
    rng = np.random.default_rng(0)
    tasks_a, tasks_b = family.sample_tasks(2, rng), family.sample_tasks(2, rng)
    reused = make_sampler(family, policy, k=2)
    reused.sample(theta, tasks_a, seed=4, per_task=False)
    b1 = reused.sample(theta, tasks_b, seed=4, per_task=False)
    b2 = make_sampler(family, policy, k=2).sample(theta, tasks_b, seed=4, per_task=False)
    for name in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(b1, name), getattr(b2, name)), name


@pytest.mark.parametrize("per_task", [False, True])
def test_task_slices_with_first_task_give_the_whole_batch(per_task: bool) -> None:
    """What a distributed sampler relies on: sampling tasks 0..1 and 2..4 separately (with
    first_task) and concatenating gives the batch of all five, terminations included."""
    family = Navigation2D(max_episode_steps=30)
    policy, _ = make_policy(3)
    theta = constant_params(policy, (0.05, 0.0), log_std=-6.0)  # std 0.0025: noise still shows
    near = [NavigationTask(goal=(0.05, 0.0))] * 2
    tasks = near + family.sample_tasks(3, np.random.default_rng(2))
    params = stack([theta] * 5) if per_task else theta
    sampler = make_sampler(family, policy, k=3)
    whole = sampler.sample(params, tasks, seed=5, per_task=per_task)
    parts = []
    for start, stop in ((0, 2), (2, 5)):
        part_params = {n: p[start:stop] for n, p in params.items()} if per_task else params
        part = make_sampler(family, policy, k=3).sample(
            part_params, tasks[start:stop], seed=5, per_task=per_task, first_task=start
        )
        parts.append(part)
    assert parts[0].rewards.shape[0] == 1 < whole.rewards.shape[0]  # padded: goal reached at once
    joined = Batch.concat_tasks(parts)
    for name in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(joined, name), getattr(whole, name)), name
    # zeros after the end of every episode
    ended = (whole.mask == 0)[..., None]
    assert (whole.observations * ended == 0).all() and (whole.actions * ended == 0).all()


def test_task_chunk_size_is_the_most_even_split_under_the_cap() -> None:
    """c tasks per chunk: c·K ≤ max_envs, the fewest chunks ⌈N / ⌊max_envs / K⌋⌉ that the cap
    allows, padding (chunks·c − N) under one task per chunk; N where everything fits."""
    for n in range(1, 50):
        for k in range(1, 11):
            assert task_chunk_size(n, k, None) == n
            for cap in range(k, 120, 7):
                c = task_chunk_size(n, k, cap)
                if n * k <= cap:
                    assert c == n
                    continue
                chunks = math.ceil(n / c)
                assert c * k <= cap
                assert chunks == math.ceil(n / (cap // k)), (n, k, cap)
                assert 0 <= chunks * c - n < chunks, (n, k, cap)
    assert task_chunk_size(45, 10, 90) == 9  # ML45: 5 chunks of 9 tasks
    assert task_chunk_size(40, 10, 150) == 14  # 3 chunks, the last padded by 2


@pytest.mark.parametrize("generic", [False, True])
@pytest.mark.parametrize("per_task", [False, True])
def test_max_envs_samples_in_chunks_with_the_same_trajectories(
    per_task: bool, generic: bool
) -> None:
    """5 tasks × K = 3 with max_envs 7: chunks of 2 tasks (the last padded with a copy), one
    set of 6 environments held, and the batch of one pass, episodes of different lengths
    included; the same with the Gymnasium (sync) backend. Same seeds and noise streams, so
    equal up to the rounding of the policy's matrix products, which can change in the last
    bit with their number of rows (MKL's kernels for small or odd row counts)."""
    family = Navigation2D(max_episode_steps=30)
    policy, _ = make_policy(3)
    theta = constant_params(policy, (0.05, 0.0), log_std=-6.0)  # std 0.0025: noise still shows
    near = [NavigationTask(goal=(0.05, 0.0))] * 2  # reached at once
    tasks = family.sample_tasks(3, np.random.default_rng(2)) + near
    params = stack([theta] * 5) if per_task else theta
    source: TaskFamily = GenericOnly(family) if generic else family
    whole = make_sampler(source, policy, k=3).sample(params, tasks, seed=5, per_task=per_task)
    capped = Sampler(source, policy, trajectories_per_task=3, dtype=DTYPE, max_envs=7)
    chunked = capped.sample(params, tasks, seed=5, per_task=per_task, first_task=0)
    assert list(capped._envs) == [6]
    assert_same_batch(chunked, whole)
    # a slice of a larger meta-batch (first_task) chunks the same way
    part = capped.sample(params if not per_task else {n: p[1:] for n, p in params.items()},
                         tasks[1:], seed=5, per_task=per_task, first_task=1)  # fmt: skip
    assert_same_batch(part, whole.task_slice(1, 5).trimmed())
    capped.close()


def assert_same_batch(got: Batch, expected: Batch) -> None:
    """The same trajectories to float64 round-off (the mask exactly)."""
    assert torch.equal(got.mask, expected.mask)
    for name in ("observations", "actions", "rewards"):
        torch.testing.assert_close(
            getattr(got, name), getattr(expected, name), rtol=0, atol=1e-12, msg=name
        )


def test_max_envs_below_one_tasks_trajectories_is_refused() -> None:
    policy, _ = make_policy(0)
    with pytest.raises(ValueError, match=r"max_envs \(2\) must be at least the 3 trajectories"):
        Sampler(Navigation2D(), policy, trajectories_per_task=3, max_envs=2)


def test_batch_trimmed_drops_the_steps_after_every_episode_ended() -> None:
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).view(4, 2, 1)
    batch = Batch(
        observations=torch.zeros(4, 2, 1, 2),
        actions=torch.zeros(4, 2, 1, 2),
        rewards=mask.clone(),
        mask=mask,
    )
    trimmed = batch.trimmed()
    assert trimmed.rewards.shape == (2, 2, 1) and torch.equal(trimmed.mask, mask[:2])
    assert trimmed.trimmed() is trimmed


# ----------------------------------------------------------------------------- per-task


def test_per_task_uses_each_tasks_own_parameters() -> None:
    family = Navigation2D()
    policy, _ = make_policy(0)
    left = constant_params(policy, (-0.1, 0.0))
    right = constant_params(policy, (0.1, 0.0))
    tasks = [FAR, FAR]
    batch = make_sampler(family, policy, k=3).sample(
        stack([left, right]), tasks, seed=0, per_task=True
    )
    assert batch.rewards.shape == (100, 2, 3)
    assert (batch.mask == 1).all()
    steps = torch.arange(100, dtype=DTYPE)[:, None]
    x = batch.observations[..., 0]
    torch.testing.assert_close(x[:, 0], -0.1 * steps.expand(100, 3), atol=1e-2, rtol=0)
    torch.testing.assert_close(x[:, 1], 0.1 * steps.expand(100, 3), atol=1e-2, rtol=0)
    assert batch.observations[..., 1].abs().max() < 1e-2
    torch.testing.assert_close(
        batch.actions[:, 0],
        torch.tensor([-0.1, 0.0], dtype=DTYPE).expand(100, 3, 2),
        atol=1e-3,
        rtol=0,
    )
    torch.testing.assert_close(
        batch.actions[:, 1],
        torch.tensor([0.1, 0.0], dtype=DTYPE).expand(100, 3, 2),
        atol=1e-3,
        rtol=0,
    )


def test_per_task_with_identical_parameters_matches_shared() -> None:
    family = Navigation2D(max_episode_steps=25)
    policy, theta = make_policy(2, init_std=0.3)
    tasks = family.sample_tasks(3, np.random.default_rng(1))
    sampler = make_sampler(family, policy, k=2)
    shared = sampler.sample(theta, tasks, seed=9, per_task=False)
    stacked = sampler.sample(stack([theta] * 3), tasks, seed=9, per_task=True)
    for name in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(
            getattr(stacked, name), getattr(shared, name), rtol=1e-6, atol=1e-6, msg=name
        )


@pytest.mark.parametrize("per_task", [False, True])
def test_deterministic_actions_are_the_policy_mean_at_every_step(per_task: bool) -> None:
    family = Navigation2D(max_episode_steps=20)
    policy, theta = make_policy(3, init_std=0.7)
    tasks = family.sample_tasks(2, np.random.default_rng(4))
    params = stack([theta, theta]) if per_task else theta
    sampler = make_sampler(family, policy, k=3)
    batch = sampler.sample(params, tasks, seed=5, per_task=per_task, deterministic=True)
    mean = policy(batch.observations).mean  # theta's mean at the visited observations
    valid = batch.mask > 0
    torch.testing.assert_close(batch.actions[valid], mean[valid], rtol=0, atol=1e-12)
    # one fixed start per task: its K mean-action episodes are one and the same
    assert torch.equal(batch.observations[:, :, 0], batch.observations[:, :, 2])
    sampled = sampler.sample(params, tasks, seed=5, per_task=per_task)
    assert not torch.allclose(sampled.actions, batch.actions)


def test_deterministic_categorical_actions_are_the_most_likely_ones() -> None:
    from maml_rl.policy import Categorical, sample

    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert sample(Categorical(logits), torch.zeros_like(logits)).tolist() == [1, 0]


# ----------------------------------------------------------------------------- generic path


def test_generic_family_uses_gym_batch_env() -> None:
    family = Navigation2D(max_episode_steps=7)
    assert isinstance(make_batch_env(family, 3), Navigation2DBatch)
    generic = make_batch_env(GenericOnly(family), 3)
    assert isinstance(generic, GymBatchEnv)
    assert generic.max_episode_steps == 7
    assert generic.num_envs == 3


def test_generic_family_without_horizon_is_rejected() -> None:
    class NoHorizon(GenericOnly):
        def __init__(self, family: Navigation2D) -> None:
            self._family = family

    with pytest.raises(TaskFamilyError, match="max_episode_steps"):
        make_batch_env(NoHorizon(Navigation2D()), 2)


def _compare_native_and_generic(native: Batch, generic: Batch) -> None:
    assert native.rewards.shape == generic.rewards.shape
    assert torch.equal(native.mask, generic.mask)
    valid = native.mask.bool()
    # after an episode ends the two envs may differ (masked out); where valid, equal
    torch.testing.assert_close(
        native.observations[valid], generic.observations[valid], rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(native.actions[valid], generic.actions[valid], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(native.rewards, generic.rewards, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        native.episode_returns, generic.episode_returns, rtol=1e-6, atol=1e-6
    )


def test_generic_path_matches_native_random_policy() -> None:
    family = Navigation2D(max_episode_steps=40)
    policy, theta = make_policy(5, init_std=0.2)
    tasks = family.sample_tasks(3, np.random.default_rng(2))
    native = make_sampler(family, policy, k=3).sample(theta, tasks, seed=8, per_task=False)
    generic = make_sampler(GenericOnly(family), policy, k=3).sample(
        theta, tasks, seed=8, per_task=False
    )
    assert native.rewards.shape == (40, 3, 3)
    _compare_native_and_generic(native, generic)


def test_generic_path_matches_native_with_terminations() -> None:
    family = Navigation2D()
    policy, _ = make_policy(0)
    left = constant_params(policy, (-0.05, 0.0))
    right = constant_params(policy, (0.05, 0.0))
    # task 0 reached after 3 steps, task 1 after 6, task 2 never
    tasks = [
        NavigationTask(goal=(-0.15, 0.0)),
        NavigationTask(goal=(0.3, 0.0)),
        NavigationTask(goal=(0.3, 0.3)),
    ]
    params = stack([left, right, right])
    native = make_sampler(family, policy, k=2).sample(params, tasks, seed=1, per_task=True)
    generic = make_sampler(GenericOnly(family), policy, k=2).sample(
        params, tasks, seed=1, per_task=True
    )
    _compare_native_and_generic(native, generic)
    lengths = native.mask.sum(0)
    torch.testing.assert_close(
        lengths, torch.tensor([[3.0, 3.0], [6.0, 6.0], [100.0, 100.0]], dtype=DTYPE)
    )


def test_generic_path_shortens_batch_when_all_terminate() -> None:
    family = Navigation2D()
    policy, _ = make_policy(0)
    params = constant_params(policy, (0.05, 0.0))
    tasks = [NavigationTask(goal=(0.1, 0.0)), NavigationTask(goal=(0.05, 0.0))]
    batch = make_sampler(GenericOnly(family), policy, k=2).sample(
        params, tasks, seed=0, per_task=False
    )
    assert batch.rewards.shape == (2, 2, 2)
    torch.testing.assert_close(
        batch.mask, torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]], dtype=DTYPE)
    )
    assert (batch.rewards[1, 1] == 0).all()


# ----------------------------------------------------------------------------- returns


def test_episode_returns_are_masked_reward_sums() -> None:
    family = Navigation2D()
    policy, _ = make_policy(0)
    params = constant_params(policy, (0.05, 0.0))
    tasks = [NavigationTask(goal=(0.2, 0.0)), FAR]
    batch = make_sampler(family, policy, k=2).sample(params, tasks, seed=0, per_task=False)
    returns = batch.episode_returns
    assert returns.shape == (2, 2)
    torch.testing.assert_close(returns, (batch.rewards * batch.mask).sum(0), rtol=0, atol=0)
    # hand-worked: reaching (0.2, 0) in 4 steps of 0.05 earns -(0.15 + 0.1 + 0.05 + 0)
    torch.testing.assert_close(returns[0], torch.full((2,), -0.3, dtype=DTYPE), atol=1e-3, rtol=0)
    # the far task: positions (0.05 t, 0) for t = 1..100, goal (0.5, 0.5)
    t = np.arange(1, 101)
    far = -np.hypot(0.05 * t - 0.5, 0.5).sum()  # ≈ -218; action noise drifts it by ~1e-2
    torch.testing.assert_close(returns[1], torch.full((2,), far, dtype=DTYPE), atol=0.1, rtol=0)


def test_episode_returns_match_replay_in_single_envs() -> None:
    family = Navigation2D(max_episode_steps=30)
    policy, theta = make_policy(4, init_std=0.05)
    rng = np.random.default_rng(6)
    tasks = [*family.sample_tasks(2, rng), NavigationTask(goal=(0.02, -0.03))]
    batch = make_sampler(family, policy, k=3).sample(theta, tasks, seed=2, per_task=False)
    assert_mask_well_formed(batch)
    for n, task in enumerate(tasks):
        for j in range(3):
            env = family.make_env()
            env.reset(options={"task": task})
            total, steps = 0.0, 0
            for t in range(batch.rewards.shape[0]):
                _, reward, terminated, truncated, _ = env.step(batch.actions[t, n, j].numpy())
                total += reward
                steps += 1
                if terminated or truncated:
                    break
            assert batch.mask[:, n, j].sum().item() == steps
            assert batch.episode_returns[n, j].item() == pytest.approx(total, rel=1e-5, abs=1e-5)
    assert math.isfinite(batch.episode_returns.sum().item())


# ----------------------------------------------------------------------------- Batch


def _batch_tensors(t: int = 4, n: int = 2, k: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "observations": torch.randn(t, n, k, 2, generator=g, dtype=DTYPE),
        "actions": torch.randn(t, n, k, 2, generator=g, dtype=DTYPE),
        "rewards": torch.randn(t, n, k, generator=g, dtype=DTYPE),
        "mask": torch.ones(t, n, k, dtype=DTYPE),
    }


def test_batch_accepts_consistent_shapes() -> None:
    batch = Batch(**_batch_tensors())
    assert batch.num_tasks == 2
    assert batch.num_steps == 24
    discrete = {**_batch_tensors(), "actions": torch.zeros(4, 2, 3, dtype=torch.long)}
    assert Batch(**discrete).actions.shape == (4, 2, 3)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("rewards", (4, 2)),
        ("rewards", (4, 2, 3, 1)),
        ("mask", (4, 2, 2)),
        ("mask", (3, 2, 3)),
        ("observations", (4, 2, 3)),
        ("observations", (4, 2, 4, 2)),
        ("observations", (4, 2, 3, 2, 1)),
        ("actions", (5, 2, 3, 2)),
        ("actions", (4, 2, 3, 2, 2)),
        ("actions", (4, 2)),
    ],
)
def test_batch_rejects_mismatched_shapes(name: str, shape: tuple[int, ...]) -> None:
    tensors = _batch_tensors()
    tensors[name] = torch.zeros(shape, dtype=DTYPE)
    with pytest.raises(ValueError):
        Batch(**tensors)


# ----------------------------------------------------------------------------- GymBatchEnv


def test_gym_batch_env_truncates_at_its_own_horizon() -> None:
    family = Navigation2D()  # the single envs would only truncate after 100 steps
    env = GymBatchEnv(family.make_env, 2, max_episode_steps=3)
    env.reset([FAR, FAR], seed=0)
    flags = [env.step(np.zeros((2, 2)))[3].tolist() for _ in range(3)]
    assert flags == [[False, False], [False, False], [True, True]]


def test_gym_batch_env_freezes_finished_envs() -> None:
    env = GymBatchEnv(Navigation2D().make_env, 2, max_episode_steps=10)
    obs = env.reset([NavigationTask(goal=(0.05, 0.0)), FAR], seed=0)
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs, np.zeros((2, 2)))
    action = np.array([[0.05, 0.0], [0.05, 0.0]])
    obs, reward, terminated, truncated = env.step(action)
    np.testing.assert_array_equal(terminated, [True, False])
    assert not truncated.any()
    assert reward[0] == pytest.approx(0.0, abs=1e-12)
    # the finished env is not stepped again: same observation, reward 0, still terminated
    obs2, reward2, terminated2, _ = env.step(action)
    np.testing.assert_array_equal(obs2[0], obs[0])
    assert reward2[0] == 0.0
    assert terminated2[0]
    np.testing.assert_allclose(obs2[1], [0.1, 0.0], atol=1e-7)
    # a reset revives it
    obs3 = env.reset([NavigationTask(goal=(0.05, 0.0)), FAR], seed=1)
    np.testing.assert_array_equal(obs3, np.zeros((2, 2)))
    _, reward3, terminated3, _ = env.step(action)
    np.testing.assert_array_equal(terminated3, [True, False])
    assert reward3[1] == pytest.approx(-math.hypot(0.45, 0.5), rel=1e-12)


def test_gym_batch_env_reset_needs_one_task_per_env() -> None:
    env = GymBatchEnv(Navigation2D().make_env, 3, max_episode_steps=5)
    with pytest.raises(ValueError, match="3"):
        env.reset([FAR, FAR], seed=0)
