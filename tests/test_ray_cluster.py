"""`RaySampler` on a real two-node Ray cluster on this machine (Ray's `cluster_utils.Cluster`:
a head and a worker node, separate raylets, every process bound to 127.0.0.1), including a
worker node that dies mid-phase. Skipped when Ray is not installed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from maml_rl.policy import GaussianMLPPolicy, parameters_of  # noqa: E402
from maml_rl.ray_sampler import (  # noqa: E402
    LOOPBACK,
    RaySampler,
    _actor_environment,
    bind_to_loopback,
)
from maml_rl.sampler import Sampler  # noqa: E402
from maml_rl.tasks import make_family  # noqa: E402

pytestmark = pytest.mark.slow  # a cluster start is about 20 s here

NODE = {"num_cpus": 1, "node_ip_address": LOOPBACK, "include_dashboard": False}


@pytest.fixture
def cluster() -> Iterator[Any]:
    bind_to_loopback(ray)
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={**NODE, "env_vars": _actor_environment()},
    )
    cluster.add_node(**NODE, env_vars=_actor_environment())
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def setup() -> tuple[Any, GaussianMLPPolicy, dict, list]:
    family = make_family("navigation", {"max_episode_steps": 100})
    policy = GaussianMLPPolicy(2, 2, (16, 16), "tanh", generator=torch.Generator().manual_seed(0))
    return family, policy, parameters_of(policy), family.sample_tasks(4, np.random.default_rng(1))


def test_two_nodes_sample_what_one_machine_samples_and_survive_a_node_death(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    family, policy, theta, tasks = setup()
    expected = Sampler(family, policy, 3).sample(theta, tasks, seed=9, per_task=False)
    events: list[str] = []
    remote = RaySampler(family, policy, 3, num_actors=2, address=cluster.address,
                        on_event=events.append, timeout_s=120)  # fmt: skip
    try:
        assert ray.get_runtime_context().gcs_address.startswith(f"{LOOPBACK}:")
        nodes = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
        assert nodes == {LOOPBACK} and len(ray.nodes()) == 2
        got = remote.sample(theta, tasks, seed=9, per_task=False)
        for name in ("observations", "actions", "rewards", "mask"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name

        worker = next(n for n in cluster.worker_nodes)
        submit = RaySampler._submit
        lost: list[Any] = []

        def submit_then_lose_the_worker(
            self: RaySampler, actor: Any, *args: Any
        ) -> Any:  # the node dies mid-phase
            ref = submit(self, actor, *args)
            if not lost:  # right after the first share went out: both shares are in flight
                lost.append(worker)
                cluster.remove_node(worker, allow_graceful=False)
                cluster.add_node(**NODE, env_vars=_actor_environment())  # its replacement
            return ref

        monkeypatch.setattr(RaySampler, "_submit", submit_then_lose_the_worker)
        got = remote.sample(theta, tasks, seed=9, per_task=False)
        for name in ("observations", "actions", "rewards", "mask"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name
        assert lost and any("died while sampling" in e for e in events), events
    finally:
        remote.close()
