"""`maml_rl.ray_sampler.RaySampler` on a local Ray instance with 2 CPUs: the same batches as
the local sampler, actors killed mid-phase, unreachable clusters. Skipped, with the reason
printed, when Ray is not installed; CI installs it (the `ray` extra)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "maml-rl[ray]"')

from maml_rl.policy import GaussianMLPPolicy, parameters_of  # noqa: E402
from maml_rl.ray_sampler import (  # noqa: E402
    LOOPBACK,
    RaySampler,
    RaySamplerError,
    _actor_environment,
    _on_loopback,
    bind_to_loopback,
)
from maml_rl.sampler import Sampler  # noqa: E402
from maml_rl.tasks import make_family  # noqa: E402
from maml_rl.types import Batch  # noqa: E402

if TYPE_CHECKING:
    from maml_rl_envs.mujoco_base import MujocoFamily
    from maml_rl_envs.navigation import Navigation2D

FIELDS = ("observations", "actions", "rewards", "mask")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    bind_to_loopback(ray)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": _actor_environment()},
        _node_ip_address=LOOPBACK,  # no test sends traffic beyond 127.0.0.1
    )
    yield
    ray.shutdown()


def setup(name: str, horizon: int = 20) -> tuple[Any, GaussianMLPPolicy, dict, list]:
    family = cast("Navigation2D | MujocoFamily", make_family(name, {"max_episode_steps": horizon}))
    obs_dim, act_dim = family.observation_space.shape[0], family.action_space.shape[0]
    policy = GaussianMLPPolicy(
        obs_dim, act_dim, (16, 16), "tanh", generator=torch.Generator().manual_seed(0)
    )
    tasks = family.sample_tasks(5, np.random.default_rng(0))
    return family, policy, parameters_of(policy), tasks


def per_task_params(theta: dict, num_tasks: int) -> dict:
    """Different parameters per task (theta plus task-dependent offsets)."""
    return {n: torch.stack([p + 0.01 * i for i in range(num_tasks)]) for n, p in theta.items()}


def assert_same(a: Batch, b: Batch) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize(
    ("name", "max_envs"), [("navigation", None), ("halfcheetah-vel", None), ("navigation", 3)]
)
def test_same_seed_same_batches_as_the_local_sampler(name: str, max_envs: int | None) -> None:
    """max_envs 3: each actor samples its share one task (3 trajectories) at a time; the same
    seeds and noise streams, so the same batch up to the rounding of the policy's float32
    products, which can change in the last bit with their number of rows."""
    family, policy, theta, tasks = setup(name)
    local = Sampler(family, policy, 3)
    remote = RaySampler(family, policy, 3, num_actors=2, max_envs=max_envs)
    assert remote._actor_args[-1] == max_envs
    try:
        for per_task, params in ((False, theta), (True, per_task_params(theta, len(tasks)))):
            expected = local.sample(params, tasks, seed=7, per_task=per_task)
            got = remote.sample(params, tasks, seed=7, per_task=per_task)
            if max_envs is None:
                assert_same(got, expected)
            else:
                assert torch.equal(got.mask, expected.mask)
                torch.testing.assert_close(got.observations, expected.observations)
            assert remote.traffic.received == sum(getattr(got, f).numpy().nbytes for f in FIELDS)
        # shared theta goes out once; per-task phi in slices: together one copy of phi
        phi_bytes = sum(p.numpy().nbytes for p in per_task_params(theta, len(tasks)).values())
        assert remote.traffic.sent == phi_bytes
        mean = local.sample(theta, tasks, seed=7, per_task=False, deterministic=True)
        assert_same(remote.sample(theta, tasks, seed=7, per_task=False, deterministic=True), mean)
        assert not torch.equal(mean.actions, local.sample(theta, tasks, 7, False).actions)
    finally:
        remote.close()
        local.close()


def test_an_actor_killed_mid_phase_is_replaced_and_its_tasks_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    family, policy, theta, tasks = setup("navigation", horizon=50)
    expected = Sampler(family, policy, 4).sample(theta, tasks, seed=3, per_task=False)
    events: list[str] = []
    remote = RaySampler(family, policy, 4, num_actors=2, on_event=events.append)
    killed: list[Any] = []
    submit = RaySampler._submit

    def submit_then_kill(
        self: RaySampler, actor: Any, *args: Any
    ) -> Any:  # the first share's actor dies in flight
        ref = submit(self, actor, *args)
        if not killed:
            killed.append(actor)
            ray.kill(actor, no_restart=True)
        return ref

    monkeypatch.setattr(RaySampler, "_submit", submit_then_kill)
    try:
        got = remote.sample(theta, tasks, seed=3, per_task=False)
        assert_same(got, expected)
        assert len(events) == 1 and "died while sampling tasks 0..1" in events[0]
        assert killed[0] not in remote.actors  # replaced for the next phases
        monkeypatch.setattr(RaySampler, "_submit", submit)
        assert_same(remote.sample(theta, tasks, seed=3, per_task=False), expected)
    finally:
        remote.close()


def test_actors_dying_twice_stop_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    family, policy, theta, tasks = setup("navigation")
    remote = RaySampler(family, policy, 2, num_actors=2)
    submit = RaySampler._submit

    def submit_then_kill(self: RaySampler, actor: Any, *args: Any) -> Any:  # every actor dies
        ref = submit(self, actor, *args)
        ray.kill(actor, no_restart=True)
        return ref

    monkeypatch.setattr(RaySampler, "_submit", submit_then_kill)
    try:
        with pytest.raises(RaySamplerError, match="died twice while sampling tasks") as error:
            remote.sample(theta, tasks, seed=0, per_task=False)
        assert "\n" not in str(error.value)
    finally:
        remote.close()


def test_a_phase_past_its_timeout_stops_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    family, policy, theta, tasks = setup("navigation")
    remote = RaySampler(family, policy, 2, num_actors=1, timeout_s=0.5)

    @ray.remote
    def never() -> None:
        import time

        time.sleep(60)

    monkeypatch.setattr(RaySampler, "_submit", lambda self, *args: never.remote())
    try:
        with pytest.raises(RaySamplerError, match=r"no batch within 0\.5 s"):
            remote.sample(theta, tasks, seed=0, per_task=False)
    finally:
        remote.close()


def test_unreachable_cluster_is_a_one_line_cli_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "maml_rl.cli", "train", "navigation", "--out", str(tmp_path / "r"),
         "--set", "sampler=ray", "--set", "ray_address=127.0.0.1:9", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Ray cluster at 127.0.0.1:9" in lines[0]


def test_two_actors_killed_at_once_are_retried_on_their_replacements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    family, policy, theta, tasks = setup("navigation", horizon=30)
    expected = Sampler(family, policy, 2).sample(theta, tasks, seed=5, per_task=False)
    events: list[str] = []
    remote = RaySampler(family, policy, 2, num_actors=2, on_event=events.append)
    first = list(remote.actors)
    submit = RaySampler._submit

    def submit_then_kill_the_first_two(
        self: RaySampler, actor: Any, *args: Any
    ) -> Any:  # a node with both actors lost
        ref = submit(self, actor, *args)
        if actor in first:
            ray.kill(actor, no_restart=True)
        return ref

    monkeypatch.setattr(RaySampler, "_submit", submit_then_kill_the_first_two)
    try:
        assert_same(remote.sample(theta, tasks, seed=5, per_task=False), expected)
        assert len(events) == 2 and all("retrying them" in e for e in events)
        assert not set(first) & set(remote.actors)
    finally:
        remote.close()


@pytest.mark.parametrize(("num_actors", "actor_cpus"), [(3, 1), (1, 64)])
def test_actors_the_cluster_cannot_hold_are_refused_in_one_line(
    num_actors: int, actor_cpus: int
) -> None:
    family, policy, _, _ = setup("navigation")
    with pytest.raises(RaySamplerError) as error:
        RaySampler(family, policy, 2, num_actors=num_actors, actor_cpus=actor_cpus)
    message = str(error.value)
    assert f"need {num_actors * actor_cpus} CPUs, the Ray cluster has 2" in message
    assert "\n" not in message


def test_actors_that_cannot_be_placed_in_time_fail_in_one_line() -> None:
    """Two actors of 2 CPUs each fit the cluster's total but not at once: the second waits
    for CPUs that never free up, which used to wait the whole phase timeout and blame it."""
    family, policy, _, _ = setup("navigation")
    holder = RaySampler(family, policy, 2, num_actors=1, actor_cpus=2)
    try:
        with pytest.raises(RaySamplerError, match=r"start 1 actors .* 30 s .* 0 CPUs free"):
            RaySampler(family, policy, 2, num_actors=1, actor_cpus=2, timeout_s=1)
    finally:
        holder.close()


def test_the_local_instance_and_loopback_clusters_bind_to_loopback() -> None:
    assert _on_loopback(None) and _on_loopback("127.0.0.1:6379") and _on_loopback("localhost:1")
    assert not _on_loopback("auto")
    assert ray.get_runtime_context().gcs_address.startswith(f"{LOOPBACK}:")
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {LOOPBACK}

    @ray.remote
    def where() -> str:
        return ray.util.get_node_ip_address()

    assert ray.get(where.remote()) == LOOPBACK


def test_a_port_that_is_not_a_ray_cluster_is_a_one_line_cli_error(tmp_path: Path) -> None:
    import http.server
    import threading
    import time

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    start = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "maml_rl.cli", "train", "navigation", "--out",
             str(tmp_path / "r"), "--set", "sampler=ray", "--set", f"ray_address={address}",
             "--set", "ray_timeout_s=5", "--no-progress"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{address} answers but is not a Ray cluster" in lines[0]
    assert time.monotonic() - start < 60
