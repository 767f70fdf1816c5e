"""threads.py: the optimisation's torch threads from the CPU time other processes used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from maml_rl import threads
from maml_rl.threads import AutoThreads, busy_seconds, threads_for


def write_stat(path: Path, ticks: dict[int, tuple[int, ...]]) -> None:
    """A /proc/stat with per-CPU lines: user nice system idle iowait irq softirq steal."""
    lines = ["cpu  1 1 1 1 1 1 1 1 0 0"]
    lines += [f"cpu{i} " + " ".join(str(v) for v in (*t, 0, 0)) for i, t in ticks.items()]
    path.write_text("\n".join([*lines, "intr 1 2 3", "ctxt 5"]) + "\n")


def test_busy_seconds_sums_the_busy_fields_of_the_allowed_cpus(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    hz = os.sysconf("SC_CLK_TCK")
    write_stat(stat, {0: (10, 1, 2, 500, 7, 3, 4, 5), 1: (20, 0, 0, 900, 0, 0, 0, 0)})
    assert busy_seconds([0], stat) == pytest.approx(25 / hz)  # idle and iowait left out
    assert busy_seconds([0, 1], stat) == pytest.approx(45 / hz)
    assert busy_seconds([0, 2], stat) is None  # a CPU without a line: not measurable
    assert busy_seconds([0], tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("cores", "others", "wall", "expected"),
    [(2, 0.0, 1.0, 2), (2, 0.4, 1.0, 2), (2, 0.6, 1.0, 1), (2, 1.0, 1.0, 1), (2, 3.0, 1.0, 1),
     (8, 2.0, 1.0, 6), (8, 2.0, 0.5, 4), (4, 1.0, 0.0, 4)],
)  # fmt: skip
def test_threads_are_the_cores_other_processes_left_free(
    cores: int, others: float, wall: float, expected: int
) -> None:
    assert threads_for(cores, others, wall) == expected


def test_auto_threads_drops_to_one_beside_a_busy_core_and_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fake counters: over a 1 s phase the machine's 2 CPUs were busy 2 s (1.5 s of them other
    processes: one thread), then busy as long as this process only (both threads again)."""
    hz = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    clock = {"wall": 100.0, "own": 10.0}
    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["own"])
    previous = torch.get_num_threads()
    try:
        governor = AutoThreads(stat=stat)
        assert governor.cores == 2

        ticks = 0

        def phase(busy_ticks: int, own: float) -> int:
            nonlocal ticks
            write_stat(stat, {0: (ticks, 0, 0, 0, 0, 0, 0, 0), 1: (0,) * 8})
            governor.start()
            ticks += busy_ticks
            clock["wall"] += 1.0
            clock["own"] += own
            write_stat(stat, {0: (ticks, 0, 0, 0, 0, 0, 0, 0), 1: (0,) * 8})
            return governor.stop()

        assert phase(2 * hz, 0.5) == 1 == torch.get_num_threads()
        assert phase(hz, 1.0) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def test_unmeasurable_counters_leave_torch_alone(tmp_path: Path) -> None:
    previous = torch.get_num_threads()
    governor = AutoThreads(stat=tmp_path / "missing")
    governor.start()
    assert governor.stop() == previous == torch.get_num_threads()


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux's per-CPU counters")
def test_this_machines_counters_are_read() -> None:
    busy = busy_seconds(threads.allowed_cpus())
    assert busy is not None and busy > 0


def test_a_meta_iteration_is_bit_identical_on_one_and_two_threads() -> None:
    """AutoThreads changes the thread count with the machine's load, mid-run: resumed and
    uninterrupted navigation runs stay bit-identical only because the result does not depend
    on it (on ant-sized inputs: the next test)."""
    from maml_rl.build import Streams, build
    from maml_rl.cli import find_config
    from maml_rl.config import load
    from maml_rl.maml import collect, draw_seeds, meta_step
    from maml_rl.policy import parameters_of

    cfg = load(find_config("navigation"), {"meta_batch_size": 6, "fast_batch_size": 10})
    streams = Streams.from_seed(cfg.seed)
    family, policy, sampler = build(cfg, streams.policy_init)
    theta = parameters_of(policy)
    tasks = family.sample_tasks(cfg.meta_batch_size, streams.tasks)
    seeds = draw_seeds(streams.environments, cfg.num_steps + 1)
    previous = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            data, _ = collect(sampler, theta, tasks, [cfg.fast_lr], seeds, cfg)
            results.append(meta_step(policy, theta, {}, data, cfg)[0])
    finally:
        torch.set_num_threads(previous)
        sampler.close()
    assert any(not torch.equal(results[0][k], theta[k]) for k in theta)  # a step was taken
    for k in theta:
        assert torch.equal(results[0][k], results[1][k]), k


def test_an_ant_sized_outer_step_is_bit_identical_on_one_and_two_threads() -> None:
    """The TRPO outer step (meta-gradient, Gauss-Newton products, CG, line search) of the ant
    configs on ant-sized float32 inputs: 105 observations, 8 actions, a 64x64 tanh policy
    (11472 parameters), 8 tasks x 20 trajectories x 100 steps. With `torch.dot` in place of
    `trpo.dot`, MKL split the CG's inner products by thread: the new theta differed by 3e-8."""
    from maml_rl.config import load
    from maml_rl.configs import find_config
    from maml_rl.maml import TaskData, batch_advantages, meta_step
    from maml_rl.policy import GaussianMLPPolicy, parameters_of
    from maml_rl.types import Batch

    steps, num_tasks, k, obs_dim, act_dim = 100, 8, 20, 105, 8
    cfg = load(find_config("ant-dir"), {"meta_batch_size": num_tasks})
    g = torch.Generator().manual_seed(0)
    policy = GaussianMLPPolicy(obs_dim, act_dim, (64, 64), "tanh", generator=g)
    theta = parameters_of(policy)

    def batch() -> Batch:
        lengths = torch.randint(10, steps + 1, (num_tasks, k), generator=g)
        mask = (torch.arange(steps).view(-1, 1, 1) < lengths).float()
        observations = torch.randn(steps, num_tasks, k, obs_dim, generator=g)
        actions = torch.randn(steps, num_tasks, k, act_dim, generator=g)
        rewards = torch.randn(steps, num_tasks, k, generator=g)
        return Batch(observations * mask[..., None], actions * mask[..., None],
                     rewards * mask, mask)  # fmt: skip

    pre, post = batch(), batch()
    data = TaskData(((pre, batch_advantages(pre, cfg)),), post, batch_advantages(post, cfg))
    previous = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(meta_step(policy, theta, {}, data, cfg))
    finally:
        torch.set_num_threads(previous)
    assert results[0][2].accepted
    for name in theta:
        assert torch.equal(results[0][0][name], results[1][0][name]), name
