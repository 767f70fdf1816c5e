"""Building a run from its config: random streams, device, task family, policy, sampler.

Shared by training and evaluation so both construct exactly the same objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from maml_rl.checker import check_family
from maml_rl.config import Config, ConfigError
from maml_rl.memory import RunSizes, check_run, environment_bytes
from maml_rl.mlp_derivatives import supports
from maml_rl.observations import FlatObservationFamily, describe, is_flat
from maml_rl.oracle import OracleFamily
from maml_rl.policy import build_policy
from maml_rl.policy_adapter import build_custom_policy
from maml_rl.sampler import Sampler, TrajectorySampler, task_chunk_size
from maml_rl.tasks import TaskFamily, TaskFamilyError, make_family
from maml_rl.vector import GYM_BACKENDS, horizon_of, resolved_backend

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Streams:
    """Independent random streams split from one seed (numpy.random.SeedSequence.spawn)."""

    tasks: np.random.Generator
    evaluation_tasks: np.random.Generator
    environments: np.random.Generator
    policy_init: torch.Generator

    @classmethod
    def from_seed(cls, seed: int) -> Streams:
        tasks, evaluation, envs, init = np.random.SeedSequence(seed).spawn(4)
        policy_init = torch.Generator().manual_seed(int(init.generate_state(1, np.uint64)[0] >> 1))
        return cls(
            np.random.default_rng(tasks),
            np.random.default_rng(evaluation),
            np.random.default_rng(envs),
            policy_init,
        )

    def state(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks.bit_generator.state,
            "evaluation_tasks": self.evaluation_tasks.bit_generator.state,
            "environments": self.environments.bit_generator.state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.tasks.bit_generator.state = state["tasks"]
        self.evaluation_tasks.bit_generator.state = state["evaluation_tasks"]
        self.environments.bit_generator.state = state["environments"]


def _flat_size(space: object) -> int:
    """Numbers per action (1 for a discrete space)."""
    shape = getattr(space, "shape", None) or (1,)
    return int(np.prod(shape))


def describe_policy(policy: nn.Module, cfg: Config) -> str:
    """What the start-up line says of the policy and its derivative path."""
    if cfg.policy is None:
        path = "closed-form Gauss-Newton products" if supports(policy) else "autograd products"
        return f"built-in MLP {list(cfg.hidden_sizes)} {cfg.nonlinearity}, {path}"
    count = sum(p.numel() for p in policy.parameters())
    return f"{cfg.policy} ({count:,} parameters), generic products (forward-mode Fisher)"


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available on this machine")
    return torch.device(name)


MEMORY_CHECKS = ("training", "evaluation")
"""What `run_sizes` describes: a meta-iteration, or an evaluation's adaptation."""


def run_sizes(
    cfg: Config,
    num_tasks: int | None = None,
    num_steps: int | None = None,
    family: TaskFamily | None = None,
    spaces: tuple[gym.Space, gym.Space] | None = None,
    kind: str = "training",
) -> RunSizes:
    """The sizes memory.py estimates (`memory.check_run` refuses them in one line where they do
    not fit) for `num_tasks` tasks (default the meta-batch) adapted for
    `num_steps` steps (default the run's num_steps; evaluate and render pass theirs). kind:
    "training" (a meta-iteration) or "evaluation" (adaptation only, as evaluate and render run
    it)."""
    if kind not in MEMORY_CHECKS:
        raise ValueError(f"kind must be one of {MEMORY_CHECKS}, got {kind!r}")
    family = make_family(cfg.env, cfg.env_kwargs) if family is None else family
    if spaces is None:
        probe = family.make_env()
        spaces = probe.observation_space, probe.action_space
        probe.close()
    num_tasks = cfg.meta_batch_size if num_tasks is None else num_tasks
    return RunSizes(
        int(gym.spaces.flatdim(spaces[0])),
        _flat_size(spaces[1]),
        tuple(cfg.hidden_sizes),
        horizon_of(family),
        num_tasks,
        cfg.fast_batch_size,
        cfg.num_steps if num_steps is None else num_steps,
        DTYPES[cfg.dtype].itemsize,
        sampled_environment_bytes(family, cfg),
        meta_step=kind == "training",
        envs_held=task_chunk_size(num_tasks, cfg.fast_batch_size, cfg.max_envs)
        * cfg.fast_batch_size,
    )


def sampled_environment_bytes(family: TaskFamily, cfg: Config) -> int:
    """E of memory.py: the memory of one of the N·K Gymnasium environments that the local
    sampler holds on the backends sync, async and procs (measured on a few environments reset
    to tasks of a fixed seed, which draws nothing from the run's streams); 0 for native batch
    environments and for Ray, whose environments live in its actors. A family that fails to
    build or reset counts as 0 here: the family check names its fault."""
    if (
        cfg.sampler == "ray"
        or resolved_backend(family, cfg.sampler, cfg.device) not in GYM_BACKENDS
    ):
        return 0
    try:
        tasks = family.sample_tasks(5, np.random.default_rng(0))

        def make_one(i: int) -> gym.Env:
            env = family.make_env()
            env.reset(seed=i, options={"task": tasks[i]})
            return env

        return environment_bytes(make_one, count=4)
    except Exception:  # the family check reports it, in one line
        return 0


def build(
    cfg: Config,
    generator: torch.Generator | None,
    on_event: Callable[[str], None] | None = None,
    num_tasks: int | None = None,
    num_steps: int | None = None,
    memory: str | None = "training",
) -> tuple[TaskFamily, nn.Module, TrajectorySampler]:
    """The task family, the policy (initialised from `generator`) and the sampler of a config.

    on_event: where a distributed sampler reports faults it recovered from (one line each).
    num_tasks, num_steps: tasks sampled at once (default the meta-batch) and inner steps (default
    the run's), for the memory check (`check_run` of `run_sizes`): sizes whose estimate
    (memory.py) exceeds the memory available raise ResourceError before allocating. memory: the
    `run_sizes`
    kind, "training" or "evaluation"; None checks no memory (a family without a run's sizes).
    """
    family = make_family(cfg.env, cfg.env_kwargs)
    if cfg.algo == "oracle":
        family = OracleFamily(family)
    probe = family.make_env()
    observation_space, action_space = probe.observation_space, probe.action_space
    probe.close()
    if cfg.policy is None and not is_flat(observation_space):
        raise TaskFamilyError(
            f"task family '{cfg.env}': the built-in MLP policy needs a flat Box observation "
            f"space, got {describe(observation_space)}; give a policy that takes it "
            "(config key `policy: module:callable`)"
        )
    if not is_flat(observation_space):  # the sampler steps flat observations
        family = FlatObservationFamily(family, observation_space)
    if memory is not None:
        spaces = (observation_space, action_space)
        check_run(run_sizes(cfg, num_tasks, num_steps, family, spaces, memory))
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
    if cfg.policy is not None:
        policy: nn.Module = build_custom_policy(
            cfg.policy, cfg.policy_kwargs, observation_space, action_space, generator, device,
            dtype,
        )  # fmt: skip
    else:
        try:
            policy = build_policy(
                observation_space,
                action_space,
                cfg.hidden_sizes,
                cfg.nonlinearity,
                cfg.init_std,
                generator=generator,
                min_std=cfg.min_std,
            )
        except ValueError as error:  # spaces the policy cannot handle
            raise TaskFamilyError(f"task family '{cfg.env}': {error}") from error
        policy = policy.to(device=device, dtype=dtype)
    if cfg.sampler == "ray":
        from maml_rl.ray_sampler import RaySampler  # optional dependency

        sampler: TrajectorySampler = RaySampler(
            family,
            policy,
            cfg.fast_batch_size,
            device,
            dtype,
            num_actors=cfg.ray_num_actors,
            actor_cpus=cfg.ray_actor_cpus,
            address=cfg.ray_address,
            timeout_s=cfg.ray_timeout_s,
            on_event=on_event,
            max_envs=cfg.max_envs,
        )
    else:
        sampler = Sampler(
            family,
            policy,
            cfg.fast_batch_size,
            device,
            dtype,
            backend=cfg.sampler,
            max_envs=cfg.max_envs,
        )
    return family, policy, sampler


def check_built(family: TaskFamily, cfg: Config) -> None:
    """The task-family check (checker.py) of a family built by `build`, as `train` runs it
    before its first iteration and `maml-rl check` runs it: anything it raises becomes a
    one-line TaskFamilyError."""
    try:
        check_family(family, seed=cfg.seed, action_std=cfg.init_std)  # the first actions
    except TaskFamilyError:
        raise
    except Exception as error:
        raise TaskFamilyError(
            f"task family {family!r}: the family check raised {type(error).__name__}: {error}"
        ) from error


def preflight(cfg: Config, check_sizes: bool = True) -> TaskFamily:
    """What `maml-rl check` runs: everything `train` checks before its first iteration, in the
    same functions: the family is built, its observation space matched with the policy (the
    built-in MLP needs a flat Box; a custom policy is built and checked, policy_adapter.py),
    the memory of the config's sizes estimated (unless not `check_sizes`: a bare family has
    no sizes of its own) and the family check run. Returns the family; raises one-line
    errors."""
    generator = torch.Generator().manual_seed(cfg.seed)
    family, _, sampler = build(cfg, generator, memory="training" if check_sizes else None)
    sampler.close()
    check_built(family, cfg)
    return family
