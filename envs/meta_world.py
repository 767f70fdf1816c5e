"""Meta-World ML1, ML10 and ML45 (Yu et al. 2019) as task families (optional extra
``metaworld``).

A task is one of the benchmark's own tasks, picked by split and index from
``metaworld.ML1(env_name, seed)`` / ``metaworld.ML10(seed)`` / ``metaworld.ML45(seed)``:
training samples only ``train_tasks`` (`sample_tasks`), evaluation only the held-out
``test_tasks`` (`sample_test_tasks`, used by `maml-rl evaluate` and `render`). In ML1 the two
splits are 50 goal positions each of one environment; in ML10 the train split is 10
environments and the test split 5 others, in ML45 45 and 5, 50 goals each. The goal is
hidden (zeros in the last 3 of 39 observation entries), so the policy must find it by adapting.

Each environment reports Meta-World's ``info["success"]`` per step (`reports_success`), and the
family asks the `procs` sampler backend by default: a Sawyer step costs 0.3–1 ms of Python
and MuJoCo, far more than a pipe round trip.

MuJoCo compatibility: MuJoCo releases after 3.3 (4.0 here) give a weld constraint 12
``eq_data`` entries (``mujoco.mjNEQDATA``, 11 before), and Meta-World 3.0 writes 11 in
``reset_mocap_welds``, which then raises a broadcast error in every Sawyer environment.
`apply_mujoco_compat` writes the same 11 values into the first 11 entries; it is installed
only when ``mjNEQDATA != 11``.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from maml_rl.tasks import TaskFamilyError, check_count

SPLITS = ("train", "test")
MAX_PATH_LENGTH = 500
"""Meta-World's episode length; stepping past it raises, so ``max_episode_steps`` <= 500."""

# Meta-World 3.0's reset_mocap_welds writes these 11 weld parameters (anchor, relative pose,
# torque scale) into every weld constraint's eq_data.
WELD_DATA = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0])


@dataclass(frozen=True)
class MetaWorldTask:
    """One Meta-World task: the benchmark's `split` ("train" or "test") and the `index` of the
    task in that split's list; `env_name` names its environment (e.g. "reach-v3")."""

    env_name: str
    split: str
    index: int


def needs_weld_fix(neqdata: int) -> bool:
    """Whether Meta-World's 11-entry weld data must be written into a longer eq_data row."""
    return neqdata != len(WELD_DATA)


def _reset_mocap_welds(self: Any) -> None:
    """Meta-World's `SawyerXYZEnv.reset_mocap_welds`, writing the first 11 eq_data entries."""
    import mujoco

    if self.model.nmocap > 0 and self.model.eq_data is not None:
        for i in range(self.model.eq_data.shape[0]):
            if self.model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                self.model.eq_data[i, : len(WELD_DATA)] = WELD_DATA
    mujoco.mj_forward(self.model, self.data)


def apply_mujoco_compat() -> bool:
    """Installs `_reset_mocap_welds` in Meta-World when this MuJoCo needs it (idempotent);
    returns whether the fix is in place."""
    import mujoco
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    if not needs_weld_fix(int(mujoco.mjNEQDATA)):
        return False
    SawyerXYZEnv.reset_mocap_welds = _reset_mocap_welds  # type: ignore[method-assign]
    return True


def _import_metaworld() -> Any:
    try:
        import metaworld
    except ImportError as error:
        raise TaskFamilyError(
            f"Meta-World is not installed ({error}); install the extra: "
            'pip install "maml-rl[metaworld]" (from a checkout: pip install -e ".[metaworld]")'
        ) from None
    apply_mujoco_compat()
    return metaworld


@functools.lru_cache(maxsize=4)
def built_benchmark(kind: str, seed: int, env_name: str | None = None) -> Any:
    """``metaworld.ML1(env_name, seed)``, ``ML10(seed)`` or ``ML45(seed)``, built once per
    process for each (kind, seed, env_name) and shared by the families that ask for it: the
    families only read it, and building one instantiates every environment of the benchmark
    (ML45: 50 environments, 10-20 s)."""
    metaworld = _import_metaworld()
    if kind == "ML1":
        return metaworld.ML1(env_name, seed=seed)
    return getattr(metaworld, kind)(seed=seed)


def balanced_counts(n: int, classes: int, rng: np.random.Generator) -> list[int]:
    """How many of n tasks each of `classes` environments gets in a balanced meta-batch:
    ⌊n / C⌋ each, and one more for n mod C of them drawn without replacement (the benchmark
    gives each environment meta_batch / C sub-environments)."""
    counts = [n // classes] * classes
    for i in rng.choice(classes, size=n % classes, replace=False):
        counts[int(i)] += 1
    return counts


class _MetaWorldFamily:
    """What ML1, ML10 and ML45 share: the benchmark (built once, lazily), its splits, the
    tasks."""

    reports_success: ClassVar[bool] = True
    sampler_backend: ClassVar[str] = "procs"
    render_camera: ClassVar[str] = "topview"
    """The camera `maml-rl render` films with: the Sawyer scene's view from above the table
    (its "corner" cameras render upside down)."""

    def __init__(self, max_episode_steps: int, benchmark_seed: int, balanced: bool = False) -> None:
        check_count("max_episode_steps", max_episode_steps, limit=MAX_PATH_LENGTH)
        if not isinstance(benchmark_seed, int) or isinstance(benchmark_seed, bool):
            raise ValueError(f"benchmark_seed must be an integer, got {benchmark_seed!r}")
        if not isinstance(balanced, bool):
            raise ValueError(f"balanced must be true or false, got {balanced!r}")
        self.max_episode_steps = int(max_episode_steps)
        self.benchmark_seed = benchmark_seed
        self.balanced = balanced
        _import_metaworld()  # a one-line error now if the extra is missing
        self._benchmark: Any = None
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (39,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    def _build(self) -> Any:  # the metaworld.ML1 / ML10 / ML45 object
        raise NotImplementedError

    @property
    def benchmark(self) -> Any:
        if self._benchmark is None:
            self._benchmark = self._build()
        return self._benchmark

    def split_tasks(self, split: str) -> list[Any]:
        """The benchmark's own Task tuples of `split` (`train_tasks` or `test_tasks`)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.benchmark.train_tasks if split == "train" else self.benchmark.test_tasks

    def env_names(self, split: str) -> list[str]:
        classes = self.benchmark.train_classes if split == "train" else self.benchmark.test_classes
        return list(classes)

    def all_tasks(self, split: str) -> list[MetaWorldTask]:
        """Every task of `split`, in the benchmark's order."""
        return [
            MetaWorldTask(task.env_name, split, index)
            for index, task in enumerate(self.split_tasks(split))
        ]

    def _sample(self, split: str, n: int, rng: np.random.Generator) -> list[MetaWorldTask]:
        """n tasks of `split`: an environment uniformly, then one of its goals uniformly; with
        `balanced`, as the benchmark's own sampling spreads a meta-batch (`balanced_counts`)."""
        by_env: dict[str, list[MetaWorldTask]] = {}
        for task in self.all_tasks(split):
            by_env.setdefault(task.env_name, []).append(task)
        names = sorted(by_env)
        if self.balanced:
            tasks = []
            for name, count in zip(names, balanced_counts(n, len(names), rng), strict=True):
                if count == 0:  # fewer tasks than environments
                    continue
                goals = by_env[name]
                # without replacement, as many times over as the count needs
                order = np.concatenate(
                    [rng.permutation(len(goals)) for _ in range(-(-count // len(goals)))]
                )
                tasks += [goals[int(i)] for i in order[:count]]
            return tasks
        picks = rng.integers(len(names), size=n)
        return [by_env[names[i]][int(rng.integers(len(by_env[names[i]])))] for i in picks]

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[MetaWorldTask]:
        """n training tasks (the benchmark's train split only)."""
        return self._sample("train", n, rng)

    def sample_test_tasks(self, n: int, rng: np.random.Generator) -> list[MetaWorldTask]:
        """n held-out tasks (the benchmark's test split), for evaluation."""
        return self._sample("test", n, rng)

    def benchmark_task(self, task: MetaWorldTask) -> Any:
        """The benchmark's Task tuple (env_name, pickled data) for one of our tasks."""
        if not isinstance(task, MetaWorldTask):
            raise TypeError(f"not a MetaWorldTask: {task!r}")
        found = self.split_tasks(task.split)[task.index]
        if found.env_name != task.env_name:
            raise ValueError(f"{task} is {found.env_name} in this benchmark (another seed?)")
        return found

    def env_class(self, env_name: str) -> type:
        benchmark = self.benchmark
        classes = {**benchmark.train_classes, **benchmark.test_classes}
        return classes[env_name]

    def make_env(self) -> MetaWorldEnv:
        self.benchmark  # noqa: B018  (built here, so that pickled copies carry it)
        return MetaWorldEnv(self)


class MetaWorldML1(_MetaWorldFamily):
    """Meta-World ML1: one environment (`env_name`, e.g. reach-v3, push-v3, pick-place-v3),
    50 training and 50 held-out goal positions (``metaworld.ML1(env_name, benchmark_seed)``)."""

    def __init__(
        self, env_name: str = "reach-v3", max_episode_steps: int = 500, benchmark_seed: int = 0
    ) -> None:
        super().__init__(max_episode_steps, benchmark_seed)
        names = _import_metaworld().ML1.ENV_NAMES
        if env_name not in names:
            raise ValueError(f"env_name {env_name!r} is not a Meta-World v3 environment: {names}")
        self.env_name = env_name

    def _build(self) -> Any:
        return built_benchmark("ML1", self.benchmark_seed, self.env_name)

    def oracle_features(self, task: MetaWorldTask) -> np.ndarray:
        """The task's parameters, Meta-World's ``rand_vec`` (object and goal positions, e.g.
        [6] for reach-v3), appended to the observations by the oracle baseline. ML10 has no
        oracle: its held-out environments are never trained on."""
        return np.asarray(pickle.loads(self.benchmark_task(task).data)["rand_vec"], np.float32)

    def __repr__(self) -> str:
        return f"MetaWorldML1({self.env_name}, H={self.max_episode_steps})"


class MetaWorldML10(_MetaWorldFamily):
    """Meta-World ML10: 10 training environments for meta-training, 5 others held out for
    evaluation, 50 goals each (``metaworld.ML10(benchmark_seed)``).

    Tasks are drawn i.i.d. (an environment uniformly, then one of its goals), or with
    ``balanced=True`` spread evenly over the environments as the benchmark's own sampler does
    (n / C of each, the remainder to environments drawn without replacement; each
    environment's goals without replacement), grouped by environment in name order, so that
    a sampler's environments keep their Sawyer environment from one iteration to the next."""

    def __init__(
        self, max_episode_steps: int = 500, benchmark_seed: int = 0, balanced: bool = False
    ) -> None:
        super().__init__(max_episode_steps, benchmark_seed, balanced)

    def _build(self) -> Any:
        return built_benchmark("ML10", self.benchmark_seed)

    def __repr__(self) -> str:
        spread = ", balanced" if self.balanced else ""
        return f"MetaWorldML10(H={self.max_episode_steps}{spread})"


class MetaWorldML45(_MetaWorldFamily):
    """Meta-World ML45: 45 training environments for meta-training, 5 others held out for
    evaluation, 50 goals each (``metaworld.ML45(benchmark_seed)``; building it instantiates
    every environment once, about 10-20 s). ``balanced`` as for ML10."""

    def __init__(
        self, max_episode_steps: int = 500, benchmark_seed: int = 0, balanced: bool = False
    ) -> None:
        super().__init__(max_episode_steps, benchmark_seed, balanced)

    def _build(self) -> Any:
        return built_benchmark("ML45", self.benchmark_seed)

    def __repr__(self) -> str:
        spread = ", balanced" if self.balanced else ""
        return f"MetaWorldML45(H={self.max_episode_steps}{spread})"


class MetaWorldEnv(gym.Env):
    """A Gymnasium environment running any task of a Meta-World family.

    ``reset(seed, options={"task": MetaWorldTask})`` switches to the task's Sawyer environment
    (built anew, in about 15 ms, when the task's environment name changes; the previous one is
    closed, so that an environment holds one Sawyer environment of about 20 MiB however many
    of ML45's 50 it visits), sets the benchmark task and, given a seed,
    seeds it with ``env.seed(seed)`` (Meta-World's reset ignores its seed). Observations are
    [39] float64 (the goal entries are zero: ML hides it); actions [4] in [-1, 1]; rewards are
    Meta-World's v3 rewards (at most 10 per step). ``info["success"]`` is Meta-World's.
    Truncated after the family's ``max_episode_steps``.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gym.Env's declaration)

    def __init__(self, family: _MetaWorldFamily) -> None:
        _import_metaworld()  # the MuJoCo fix, also in worker processes that unpickled the family
        self.family = family
        self.observation_space = family.observation_space
        self.action_space = family.action_space
        self._env: Any = None
        self._env_name: str | None = None
        self._task: MetaWorldTask | None = None
        self._t = 0

    def _sawyer(self, env_name: str) -> Any:
        """The Sawyer environment `env_name`: the current one, or a new one replacing it."""
        if env_name != self._env_name:
            self.close()
            self._env = self.family.env_class(env_name)()
            self._env_name = env_name
        return self._env

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        task = (options or {}).get("task", self._task)
        if task is None:
            raise ValueError("reset needs options={'task': MetaWorldTask} the first time")
        if task != self._task:
            self._env = self._sawyer(task.env_name)
            self._env.set_task(self.family.benchmark_task(task))
            self._task = task
        if seed is not None:
            self._env.seed(seed)
        obs, info = self._env.reset()
        self._t = 0
        return np.asarray(obs, dtype=np.float64), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._env is None:
            raise RuntimeError("reset before step")
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action))
        self._t += 1
        truncated = bool(truncated) or self._t >= self.family.max_episode_steps
        info = {**info, "success": bool(info.get("success", 0.0))}
        return np.asarray(obs, dtype=np.float64), float(reward), bool(terminated), truncated, info

    @property
    def task(self) -> MetaWorldTask | None:
        """The current task (None before the first reset)."""
        return self._task

    def _current(self) -> Any:
        """The Sawyer environment of the current task (before any reset: the first held-out
        environment, so that a renderer can be built on its model)."""
        if self._env is None:
            self._env = self._sawyer(self.family.env_names("test")[0])
        return self._env

    @property
    def model(self) -> Any:
        """The current Sawyer environment's MjModel (`maml-rl render` films it); in ML10 it
        changes with the task's environment."""
        return self._current().model

    @property
    def data(self) -> Any:
        """The current Sawyer environment's MjData."""
        return self._current().data

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._env_name, self._task = None, None, None


def expert_policy(env_name: str) -> Any:
    """Meta-World's scripted policy for `env_name` (``metaworld.policies``), e.g.
    SawyerReachV3Policy for reach-v3; its `get_action(obs)` needs the goal in obs[36:39]."""
    from metaworld import policies

    name = "Sawyer" + "".join(part.capitalize() for part in env_name.split("-")) + "Policy"
    if not hasattr(policies, name):
        raise ValueError(f"Meta-World has no scripted policy {name}")
    return getattr(policies, name)()


def goal_of(env: MetaWorldEnv) -> np.ndarray:
    """The current task's goal position [3] (hidden from the observation in ML benchmarks)."""
    return np.asarray(env._env._target_pos, dtype=np.float64)


__all__: Sequence[str] = (
    "MetaWorldEnv",
    "MetaWorldML1",
    "MetaWorldML10",
    "MetaWorldML45",
    "MetaWorldTask",
    "apply_mujoco_compat",
    "needs_weld_fix",
)
