"""Adaptation curves (Finn et al. 2017, Fig. 5): average return after 0..S gradient steps.

The evaluation protocol of the paper and its test scripts: N held-out tasks drawn from the
evaluation stream of a seed, K trajectories per task and step, a step-size schedule (0.1 for
the first step and 0.05 after), the average undiscounted return after each step. Sampling and
adaptation are `maml.collect`, exactly as in training; every method sees the same tasks and
the same environment seeds (common random numbers).

Methods: **maml** (the run's theta; its meta-learned step sizes if it has them, else the
schedule), **pretrained** (theta of a plain-TRPO run, adapted with the schedule), **random**
(a freshly initialised policy, adapted likewise) and **oracle** (theta of a TRPO run that
observes the task parameters, not adapted: its 0-step return at every step).

What an evaluation writes, reads back and merges in its folder is `evaluation_files`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from maml_rl import artifacts, checkpoint
from maml_rl.build import Streams, build, run_sizes
from maml_rl.config import Config, ConfigError, from_saved
from maml_rl.inner import StepSize, step_sizes_of
from maml_rl.maml import collect, draw_seeds
from maml_rl.memory import check_run
from maml_rl.policy import parameters_of
from maml_rl.sampler import TrajectorySampler
from maml_rl.tasks import Task, add_import_root, make_family
from maml_rl.types import Batch, Params

BASELINES = ("pretrained", "random", "oracle")
RAN_ON = "ran_on"
"""The key of `evaluation.json` that records where each method ran (not a protocol key)."""
TRAINED = "trained_iterations"
"""The key of `evaluation.json` that records how many iterations each method trained."""
CHECKPOINTS = {"best": "checkpoint_best.pt", "latest": "checkpoint_latest.pt"}


@dataclass(frozen=True)
class SummaryRow:
    """One row of `adaptation.csv`: a method's return after `step` gradient steps."""

    method: str
    step: int
    mean_return: float
    std_error: float
    ci95_low: float
    ci95_high: float
    num_tasks: int


COLUMNS = tuple(f.name for f in fields(SummaryRow))


def adaptation_returns(
    sampler: TrajectorySampler,
    theta: Params,
    tasks: Sequence[Task],
    step_sizes: Sequence[StepSize],
    seeds: Sequence[int],
    cfg: Config,
) -> np.ndarray:
    """Per-task mean undiscounted return after 0..S inner steps: [S + 1, N].

    Row i is the mean over the K trajectories of each task sampled with the parameters after
    i steps (`maml.collect`; S = len(step_sizes), seeds: S + 1 sampling seeds).
    """
    return mean_returns(adaptation_batches(sampler, theta, tasks, step_sizes, seeds, cfg))


def mean_returns(batches: Sequence[Batch]) -> np.ndarray:
    """Per-task mean undiscounted return of each batch: [len(batches), N] float64."""
    returns = torch.stack([batch.episode_returns.mean(dim=1) for batch in batches])
    return returns.double().cpu().numpy()


def mean_success(batches: Sequence[Batch]) -> np.ndarray | None:
    """Per-task success rate of each batch: [len(batches), N] float64, the fraction of a
    task's K episodes that succeeded at any valid step; None if the batches carry no success
    signal (the family does not report it)."""
    rates = [batch.episode_success for batch in batches]
    if any(rate is None for rate in rates):
        return None
    return torch.stack([rate.mean(dim=1) for rate in rates]).double().cpu().numpy()  # type: ignore[union-attr]


ACTIONS = ("sampled", "mean")
"""What an evaluation measures after each step: the policy's sampled actions (the paper's
protocol, the episodes that also adapt) or its mean actions (the mode: Meta-World's test
protocol, episodes rolled out beside the ones that adapt)."""


def adaptation_batches(
    sampler: TrajectorySampler,
    theta: Params,
    tasks: Sequence[Task],
    step_sizes: Sequence[StepSize],
    seeds: Sequence[int],
    cfg: Config,
    actions: str = "sampled",
) -> list[Batch]:
    """The batches measured after 0..S inner steps, each [T, N, K, ...].

    sampled: the batches `maml.collect` samples and adapts on. mean: adaptation is the same
    (on sampled actions), and after each step i the parameters (theta, then phi_i) are also
    rolled out with their mean actions from the same environment seeds (seeds[i])."""
    if actions not in ACTIONS:
        raise ConfigError(f"--actions must be one of {list(ACTIONS)}, got {actions!r}")
    data, adapted = collect(sampler, theta, tasks, step_sizes, seeds, cfg)
    if actions == "sampled":
        return [batch for batch, _ in data.inner] + [data.post]
    return [
        sampler.sample(params, tasks, seed=seeds[i], per_task=i > 0, deterministic=True)
        for i, params in enumerate([theta, *adapted])
    ]


@dataclass(frozen=True)
class HeldOut:
    """The held-out tasks of an evaluation and its S + 1 sampling seeds."""

    eval_seed: int
    tasks: list[Task]
    seeds: list[int]


def check_eval_seed(eval_seed: int | None) -> None:
    """A one-line ConfigError for an eval seed outside [0, 2**63) (as train's seed)."""
    if eval_seed is not None and not 0 <= eval_seed < 2**63:
        raise ConfigError(f"--eval-seed must be in [0, 2**63), got {eval_seed}")


def held_out(cfg: Config, num_tasks: int, num_steps: int, eval_seed: int | None) -> HeldOut:
    """`num_tasks` tasks and `num_steps + 1` seeds from the evaluation stream of `eval_seed`
    (default: the run's seed), separate from the training tasks' stream.

    A family with a held-out split (Meta-World's test tasks) provides
    ``sample_test_tasks(n, rng)``; its tasks are drawn from there, never seen in training."""
    seed = cfg.seed if eval_seed is None else eval_seed
    check_eval_seed(seed)
    rng = Streams.from_seed(seed).evaluation_tasks
    family = make_family(cfg.env, cfg.env_kwargs)
    sample = getattr(family, "sample_test_tasks", family.sample_tasks)
    tasks = sample(num_tasks, rng)
    return HeldOut(seed, list(tasks), draw_seeds(rng, num_steps + 1))


def summarize(returns: np.ndarray, method: str = "") -> list[SummaryRow]:
    """Mean, standard error and 95% confidence interval over tasks, per step.

    returns: [S + 1, N]. SE = std(ddof=1) / sqrt(N); CI = mean ± t_{0.975, N-1} · SE (Student t).
    With a single task SE and CI are NaN.
    """
    returns = np.asarray(returns, dtype=np.float64)
    num_tasks = returns.shape[1]
    rows = []
    for step, values in enumerate(returns):
        mean = float(values.mean())
        if num_tasks > 1:
            std_error = float(values.std(ddof=1) / math.sqrt(num_tasks))
            half_width = float(stats.t.ppf(0.975, num_tasks - 1)) * std_error
        else:
            std_error = half_width = math.nan
        rows.append(
            SummaryRow(
                method, step, mean, std_error, mean - half_width, mean + half_width, num_tasks
            )
        )
    return rows


def step_size_schedule(
    fast_lr: float, num_steps: int, given: Sequence[float] = (), trained_steps: int = 1
) -> list[float]:
    """Step sizes of steps 1..S: `given`, its last value repeated up to S steps; by default
    fast_lr for the `trained_steps` steps MAML meta-trained (the run's num_steps), then half
    of it: for a one-step run the paper's 0.1 then 0.05."""
    if not given:
        trained = min(num_steps, max(1, trained_steps))
        return [fast_lr] * trained + [fast_lr / 2] * (num_steps - trained) if num_steps else []
    if len(given) > num_steps:
        raise ConfigError(f"--step-sizes gives {len(given)} step sizes for {num_steps} steps")
    if any(not (math.isfinite(a) and a > 0) for a in given):
        raise ConfigError(f"--step-sizes must be positive numbers, got {list(given)}")
    return [float(a) for a in given] + [float(given[-1])] * (num_steps - len(given))


@dataclass(frozen=True)
class LoadedRun:
    """A trained run: its config, meta-parameters and meta-learned step sizes (maybe empty).

    >>> run = maml_rl.load_run("runs/nav")  # doctest: +SKIP
    >>> run.iteration, run.cfg.env, sorted(run.theta)[:2]  # doctest: +SKIP
    (499, 'navigation', ['log_std', 'mean.0.bias'])
    """

    run_dir: Path
    cfg: Config
    theta: Params
    step_size: Params
    iteration: int


def load_run(run_dir: str | Path, which: str = "latest", device: str | None = None) -> LoadedRun:
    """The config and parameters of `DIR/checkpoint_<which>.pt` (CheckpointError if absent).

    The parameters are loaded onto the CPU; device: where the run's policy is to run from now
    on (default: the device it trained on), e.g. 'cpu' for a run trained on 'cuda'.

    >>> run = load_run("runs/nav", "best")  # doctest: +SKIP
    >>> run.cfg.fast_lr, run.theta["log_std"]  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    artifacts.require_run_dir(run_dir)
    if which not in CHECKPOINTS:
        raise ConfigError(f"--checkpoint must be one of {list(CHECKPOINTS)}, got {which!r}")
    state = checkpoint.load(run_dir / CHECKPOINTS[which])
    add_import_root(state.get("import_root"))  # a module:Class family, from any directory
    add_import_root(state.get("policy_import_root"))  # a module:callable policy
    cfg = from_saved(state["config"] | ({} if device is None else {"device": device}))
    return LoadedRun(run_dir, cfg, state["theta"], state["step_size"], state["iteration"])


def check_request(
    run_dir: str | Path,
    num_steps: int,
    num_tasks: int,
    which: str,
    step_sizes: Sequence[float] = (),
    baselines: Sequence[str] = (),
    device: str | None = None,
    actions: str = "sampled",
) -> LoadedRun:
    """The MAML run to evaluate, after checking the request (one-line errors, nothing run)."""
    if actions not in ACTIONS:
        raise ConfigError(f"--actions must be one of {list(ACTIONS)}, got {actions!r}")
    for name in baselines:
        if name not in BASELINES:
            raise ConfigError(f"unknown baseline '{name}'; choose from {', '.join(BASELINES)}")
    if num_steps < 0 or num_tasks < 1:
        raise ConfigError(
            f"evaluation needs --num-steps >= 0 and --num-tasks >= 1, got {num_steps}, {num_tasks}"
        )
    run = load_run(run_dir, which, device)
    if run.cfg.algo != "maml":
        raise ConfigError(
            f"{run.run_dir} is an algo={run.cfg.algo} run; evaluate a MAML run and pass this "
            f"one as --{run.cfg.algo} DIR"
        )
    # this evaluation's sizes, before any list; mean actions add S + 1 batches of data only,
    # small against the activations the estimate counts
    check_run(run_sizes(run.cfg, num_tasks, num_steps, kind="evaluation"))
    step_size_schedule(run.cfg.fast_lr, num_steps, step_sizes, run.cfg.num_steps)
    return run


def _check_compatible(name: str, run: LoadedRun, baseline: LoadedRun) -> None:
    if baseline.cfg.algo != name:
        raise ConfigError(
            f"{name} baseline {baseline.run_dir} is an algo={baseline.cfg.algo} run, "
            f"expected algo={name}"
        )
    if (baseline.cfg.env, baseline.cfg.env_kwargs) != (run.cfg.env, run.cfg.env_kwargs):
        raise ConfigError(
            f"{name} baseline {baseline.run_dir} was trained on {baseline.cfg.env} "
            f"{baseline.cfg.env_kwargs}, the run on {run.cfg.env} {run.cfg.env_kwargs}"
        )


def maml_step_sizes(run: LoadedRun, schedule: Sequence[float]) -> list[StepSize]:
    """The step sizes a MAML run adapts with: its meta-learned ones (per-step ones: step s
    uses alpha_s, steps past the trained ones the last alpha), else the schedule."""
    if run.step_size:
        return step_sizes_of(run.step_size, run.cfg.fast_lr, len(schedule))
    return list(schedule)


def method_batches(
    cfg: Config,
    theta: Params | None,
    num_trajectories: int,
    evaluation: Config,
    tasks: Sequence[Task],
    step_sizes: Sequence[StepSize],
    seeds: Sequence[int],
    init_seed: int,
    first_task: int = 0,
    actions: str = "sampled",
) -> list[Batch]:
    """The batches after 0..S steps of a policy built from `cfg` with parameters `theta`
    (None: its fresh initialisation from `init_seed`), K = num_trajectories per task, of its
    sampled or mean `actions` (`adaptation_batches`).

    first_task: the index of tasks[0] among the held-out tasks, so that a slice of them
    samples exactly the trajectories it gets within the whole set (`Sampler.sample`)."""
    generator = torch.Generator().manual_seed(init_seed)
    _, policy, sampler = build(
        replace(cfg, fast_batch_size=num_trajectories),
        generator,
        num_tasks=len(tasks),
        num_steps=len(step_sizes),
        memory="evaluation",
    )
    if theta is None:
        theta = parameters_of(policy)
    checkpoint.check_parameters(theta, parameters_of(policy), "the checkpoint")

    def to_sampler(params: Params) -> Params:
        return {n: p.to(sampler.device, sampler.dtype) for n, p in params.items()}

    steps = [a if isinstance(a, float | int) else to_sampler(a) for a in step_sizes]
    offset = _Offset(sampler, first_task) if first_task else sampler
    try:
        return adaptation_batches(
            offset, to_sampler(theta), tasks, steps, seeds, evaluation, actions
        )
    finally:
        sampler.close()


class _Offset:
    """A sampler whose tasks are a slice starting at `first_task` of a larger set."""

    def __init__(self, sampler: TrajectorySampler, first_task: int) -> None:
        self._sampler, self._first = sampler, first_task
        self.policy, self.device, self.dtype = sampler.policy, sampler.device, sampler.dtype

    def sample(
        self,
        params: Params,
        tasks: Sequence[Task],
        seed: int,
        per_task: bool,
        first_task: int = 0,
        deterministic: bool = False,
    ) -> Batch:
        return self._sampler.sample(
            params, tasks, seed, per_task, self._first + first_task, deterministic
        )

    def close(self) -> None:
        self._sampler.close()


@dataclass(frozen=True)
class Evaluation:
    """Returns of every method ([S + 1, N] each, in evaluation order) and what produced them.

    >>> result = maml_rl.evaluate("runs/nav", num_tasks=40)  # doctest: +SKIP
    >>> result.returns["maml"].shape, result.means["maml"]  # doctest: +SKIP
    ((4, 40), array([-40.1, -21.3, -19.8, -19.5]))
    """

    env: str
    returns: dict[str, np.ndarray]
    step_sizes: tuple[float, ...]
    learned_step_size: bool
    eval_seed: int
    num_trajectories: int
    checkpoint: str = ""
    """Which checkpoint of which iteration was evaluated (`latest@499`)."""
    success: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-task success rates of every method ([S + 1, N] each), for families reporting
    success; empty otherwise."""
    ran_on: dict[str, str] = field(default_factory=dict)
    """Where each method's policy ran ('cpu/float32', 'cuda/float64'); 'unrecorded' for a
    method kept from an evaluation saved before this was recorded. Not part of the protocol:
    the same tasks and seeds on another device differ only by round-off."""
    trained: dict[str, int] = field(default_factory=dict)
    """How many iterations each method's run had trained, to the evaluated checkpoint (random,
    an initialisation, has none). Recorded beside the protocol, like `ran_on`: the legend and
    `maml-rl evaluate`'s table say it, so that a short-trained baseline is not mistaken for a
    converged one."""
    env_kwargs: dict[str, object] = field(default_factory=dict)
    """The family's keyword arguments (bounds, horizon, ...): with `env`, the eval seed and the
    numbers of tasks, steps and trajectories, what defines the held-out tasks."""
    actions: str = "sampled"
    """What was measured after each step: the sampled actions or the mean ones (ACTIONS)."""

    @property
    def shape(self) -> tuple[int, int]:
        """(S + 1, N) of every method's returns: steps 0..S by held-out tasks; (0, 0) when
        no method has any."""
        if not self.returns:
            return (0, 0)
        steps, tasks = next(iter(self.returns.values())).shape
        return int(steps), int(tasks)

    @property
    def protocol(self) -> dict[str, object]:
        """What makes two evaluations' per-task returns comparable (same tasks and seeds).
        Evaluations saved before a key was added lack it: `same_protocol` treats it as
        unknown."""
        shape = self.shape
        return {
            "env": self.env,
            "checkpoint": self.checkpoint,
            "eval_seed": self.eval_seed,
            "num_trajectories": self.num_trajectories,
            "step_sizes": list(self.step_sizes),
            "num_steps": int(shape[0]) - 1,
            "num_tasks": int(shape[1]),
            "env_kwargs": json.loads(json.dumps(self.env_kwargs)),  # as evaluation.json reads
            "actions": self.actions,
        }

    @property
    def record(self) -> dict[str, object]:
        """What `evaluation.json` holds: the protocol and, under RAN_ON, where each method ran,
        under TRAINED, how many iterations each had trained."""
        return {**self.protocol, RAN_ON: dict(self.ran_on), TRAINED: dict(self.trained)}

    @property
    def means(self) -> dict[str, np.ndarray]:
        """Each method's mean return over the tasks after 0..S steps: [S + 1] float64."""
        return {name: r.mean(axis=1) for name, r in self.returns.items()}

    @property
    def rows(self) -> list[SummaryRow]:
        """Mean, standard error and 95 % interval over tasks per method and step (`summarize`)."""
        return [row for name, r in self.returns.items() for row in summarize(r, name)]

    @property
    def success_rows(self) -> list[SummaryRow]:
        """Summary rows of the success rates (`mean_return` holds the mean success rate)."""
        return [row for name, r in self.success.items() for row in summarize(r, name)]


def evaluate_run(
    run_dir: str | Path,
    baselines: Mapping[str, str | Path | None] | None = None,
    num_steps: int = 3,
    num_tasks: int = 40,
    which: str = "latest",
    step_sizes: Sequence[float] = (),
    eval_seed: int | None = None,
    device: str | None = None,
    actions: str = "sampled",
) -> Evaluation:
    """Adaptation curves of the MAML run in `run_dir` and of the requested baselines.

    baselines: name -> run directory ('pretrained', 'oracle') or None ('random').
    device: where every method's policy runs (default: the device each trained on).
    actions: measure the sampled actions or the mean ones after each step (ACTIONS).
    Held-out tasks and the S + 1 sampling seeds come from the evaluation stream of
    `eval_seed` (default: the run's seed); every method sees the same tasks and seeds.
    """
    baselines = dict(baselines or {})
    run = check_request(
        run_dir, num_steps, num_tasks, which, step_sizes, list(baselines), device, actions
    )
    cfg = run.cfg
    for name, path in baselines.items():
        if name != "random" and path is None:
            raise ConfigError(f"the {name} baseline needs the directory of an algo={name} run")
    loaded = {
        name: load_run(path, which, device) for name, path in baselines.items() if path is not None
    }
    for name, baseline in loaded.items():
        _check_compatible(name, run, baseline)

    # --- the held-out tasks, the sampling seeds and the schedule, shared by every method ---
    chosen = held_out(cfg, num_tasks, num_steps, eval_seed)
    tasks, seeds, seed = chosen.tasks, chosen.seeds, chosen.eval_seed
    schedule = step_size_schedule(cfg.fast_lr, num_steps, step_sizes, cfg.num_steps)
    k = cfg.fast_batch_size

    returns: dict[str, np.ndarray] = {}
    success: dict[str, np.ndarray] = {}
    ran_on: dict[str, str] = {}

    def curve(
        name: str, method_cfg: Config, theta: Params | None, steps: Sequence[StepSize]
    ) -> None:
        batches = method_batches(
            method_cfg, theta, k, cfg, tasks, steps, seeds, seed, actions=actions
        )
        returns[name], rates = mean_returns(batches), mean_success(batches)
        ran_on[name] = f"{method_cfg.device}/{method_cfg.dtype}"
        if rates is not None:
            success[name] = rates
        if not steps:  # the oracle: sampled once, not adapted
            returns[name] = np.repeat(returns[name], num_steps + 1, axis=0)
            if rates is not None:
                success[name] = np.repeat(rates, num_steps + 1, axis=0)

    learned = bool(run.step_size)
    curve("maml", cfg, run.theta, maml_step_sizes(run, schedule))
    for name in baselines:
        if name == "random":
            curve(name, cfg, None, schedule)
        elif name == "pretrained":
            curve(name, loaded[name].cfg, loaded[name].theta, schedule)
        else:
            curve(name, loaded[name].cfg, loaded[name].theta, [])
    checkpoint = f"{which}@{run.iteration}"
    trained = {"maml": run.iteration + 1}
    trained.update({name: baseline.iteration + 1 for name, baseline in loaded.items()})
    return Evaluation(
        cfg.env, returns, tuple(schedule), learned, seed, k, checkpoint, success, ran_on, trained,
        dict(cfg.env_kwargs), actions,
    )  # fmt: skip


def mixed_devices_note(ran_on: dict[str, str]) -> str:
    """'' when every method ran on one device and dtype; else one line naming where each ran
    (their returns then differ from a one-device evaluation by round-off)."""
    if len(set(ran_on.values())) <= 1:
        return ""
    where = ", ".join(f"{method} on {place}" for method, place in ran_on.items())
    return f"note: this evaluation merges methods run on different devices ({where})"


def format_table(rows: Sequence[SummaryRow], value: str = "mean return") -> str:
    """The rows as an aligned text table (for the command line); `value` names the column."""
    lines = [f"{'method':<12}{'step':>5}{value:>14}{'std error':>12}{'95% CI':>24}"]
    for r in rows:
        interval = f"[{r.ci95_low:.2f}, {r.ci95_high:.2f}]"
        lines.append(
            f"{r.method:<12}{r.step:>5}{r.mean_return:>14.2f}{r.std_error:>12.2f}{interval:>24}"
        )
    return "\n".join(lines)
