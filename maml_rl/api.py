"""The Python API: what the ``maml-rl`` command line does, as functions a script calls.

    import maml_rl

    cfg = maml_rl.load_config("navigation", num_batches=50, seed=1)

    def report(info: maml_rl.IterationInfo) -> bool:
        print(info.iteration, info.metrics["returns/post_update"])
        return info.metrics["returns/post_update"] < -8  # False: stop, resumable

    maml_rl.train(cfg, "runs/nav", callbacks=[report])
    maml_rl.train(None, "runs/nav", resume=True)  # on to num_batches
    result = maml_rl.evaluate("runs/nav", num_tasks=40, num_steps=3, baselines=["random"])
    result.means["maml"]  # mean return after 0..3 steps, over the 40 tasks
    result.returns["maml"][1]  # each task's return after one step
    run = maml_rl.load_run("runs/nav")  # its Config, theta, step sizes, iteration

The public names, at the top level of `maml_rl` (`maml_rl.__all__`): `Config`, `ConfigError`,
`load_config`, `train`, `IterationInfo` (what a callback receives), `StopTraining`,
`evaluate`, `Evaluation`, `load_run`, `LoadedRun`, `Normal`, `Categorical` (the distribution
types a policy returns) and `configure_process` (the process-wide settings a run applies,
`maml_rl.runtime`).

`maml-rl train` and `maml-rl evaluate` call `train` and `evaluate` here.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from maml_rl import checkpoint
from maml_rl import config as config_module
from maml_rl.config import Config, ConfigError
from maml_rl.configs import find_config
from maml_rl.errors import CheckpointError
from maml_rl.evaluate import Evaluation, check_eval_seed, check_request, evaluate_run, load_run
from maml_rl.evaluation_files import hold_eval_dir
from maml_rl.evaluation_files import save as save_evaluation
from maml_rl.oracle import OracleFamily
from maml_rl.runtime import configure_process
from maml_rl.tasks import make_family
from maml_rl.train import LATEST, Callback, load_resume_config
from maml_rl.train import train as run_training

# `maml_rl.train` and `maml_rl.evaluate` name the functions below, not the modules of the same
# names: this module takes what it needs from those with `from maml_rl.train import ...`.

Report = Callable[[str], None]


def load_config(name_or_path: str | Path, /, **overrides: Any) -> Config:
    """The `Config` of a YAML file, or of a shipped config by name (``navigation``,
    ``halfcheetah-vel``, ...: an unknown name's error lists them; ./experiments/NAME.yaml comes
    first), with `overrides` on top (strict: an unknown key or a wrong type raises
    `ConfigError` naming it). A pytorch-maml-rl config is translated, with a `UserWarning`
    saying what was mapped.

    >>> cfg = load_config("navigation", meta_batch_size=2, fast_batch_size=2, num_batches=3)
    >>> cfg.env, cfg.num_batches
    ('navigation', 3)
    """
    notes: list[str] = []
    cfg = config_module.load(find_config(name_or_path), overrides, notes=notes)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return cfg


def train(
    config: Config | str | Path | None,
    run_dir: str | Path,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
    check: bool = True,
    process_settings: bool = True,
) -> list[dict[str, float]]:
    """Meta-train into `run_dir` (checkpoints, ``metrics.jsonl``, TensorBoard, ``config.yaml``);
    returns the metrics rows of the iterations this call ran.

    config: a `Config`, a YAML path or a shipped config name; with ``resume=True`` None means
        the run's own config, and a given one may change only what a resume may
        (``num_batches``, ``device``, the sampler, ``torch_threads``, ``hvp``).
    callbacks: each is called after every iteration, once it is checkpointed, with an
        `IterationInfo` (iteration, metrics row, theta, ...); returning False or raising
        `StopTraining` ends the run after that iteration, resumable with ``resume=True``.
    resume: go on from the run's latest checkpoint; overwrite: replace a run in `run_dir`.
    process_settings: apply `configure_process` first (``MAML_RL_PROCESS_SETTINGS=off`` too
        turns it off); its thread and MKL settings reach this process only if torch was not
        imported yet.

    >>> cfg = load_config("navigation", num_batches=10)
    >>> stop_at_3 = lambda info: info.iteration < 2  # False after iteration 2: stop
    >>> rows = train(cfg, "runs/nav", callbacks=[stop_at_3])  # doctest: +SKIP
    >>> rows = train(None, "runs/nav", resume=True)  # iterations 3..9  # doctest: +SKIP
    """
    configure_process(process_settings)
    run_dir = Path(run_dir)
    if isinstance(config, str | Path):
        config = load_config(config)
    if resume:
        changes = {} if config is None else config.to_dict()
        config = load_resume_config(run_dir, changes)
    elif config is None:
        raise ConfigError("train needs a config (or resume=True to continue a run)")
    return run_training(
        config,
        run_dir,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        tensorboard=tensorboard,
        check=check,
        callbacks=callbacks,
    )


def baseline_run_dir(
    run_dir: Path,
    name: str,
    train_iterations: int | None = None,
    device: str | None = None,
    progress: bool = True,
    report: Report | None = None,
) -> Path:
    """The run directory of baseline `name` ('pretrained' or 'oracle') kept in
    DIR/baselines/NAME, trained (or resumed) there first for `train_iterations` iterations
    when given; a one-line `ConfigError` when there is none and none is to be trained."""
    target = run_dir / "baselines" / name
    if train_iterations is None:
        if (target / LATEST).exists():
            return target
        raise ConfigError(
            f"no {name} baseline: pass --{name} DIR, or --train-baselines N "
            f"to train one in {target} (from Python: baselines={{'{name}': DIR}} "
            "or train_baselines=N)"
        )
    if train_iterations < 1:
        raise ConfigError(f"--train-baselines must be >= 1, got {train_iterations}")
    if (target / LATEST).exists():
        if checkpoint.load(target / LATEST)["iteration"] + 1 >= train_iterations:
            return target
        where = {} if device is None else {"device": device}
        cfg, resume = load_resume_config(target, {"num_batches": train_iterations} | where), True
    else:
        run_cfg = load_run(run_dir, device=device).cfg
        values = {"algo": name, "num_batches": train_iterations}
        cfg, resume = config_module.from_dict(values, base=run_cfg), False
    if report is not None:
        count = f"{train_iterations} iteration{'s' if train_iterations != 1 else ''}"
        report(f"training the {name} baseline for {count} in {target}")
    run_training(cfg, target, resume=resume, overwrite=not resume, progress=progress)
    done = checkpoint.load(target / LATEST)["iteration"] + 1 if (target / LATEST).exists() else 0
    if done < train_iterations:  # stopped early: do not evaluate a half-trained baseline
        raise CheckpointError(
            f"the {name} baseline stopped after {done} of {train_iterations} iterations; "
            "run the same command again to resume it"
        )
    return target


def evaluate(
    run_dir: str | Path,
    *,
    num_steps: int = 3,
    num_tasks: int = 40,
    checkpoint: str = "latest",
    baselines: Sequence[str] | Mapping[str, str | Path | None] = (),
    train_baselines: int | None = None,
    step_sizes: Sequence[float] = (),
    eval_seed: int | None = None,
    device: str | None = None,
    actions: str = "sampled",
    save: bool = True,
    out_dir: str | Path | None = None,
    progress: bool = True,
    report: Report | None = None,
    process_settings: bool = True,
) -> Evaluation:
    """Adaptation curves of the MAML run in `run_dir` on `num_tasks` held-out tasks after
    0..`num_steps` gradient steps (`maml_rl.evaluate`'s protocol), and of the baselines; every
    method sees the same tasks and environment seeds.

    baselines: names among 'pretrained', 'random', 'oracle', or a mapping name -> run
        directory of an algo=NAME run (None: DIR/baselines/NAME, trained there first for
        `train_baselines` iterations when given).
    checkpoint: 'latest' or 'best'; step_sizes: the inner step sizes, the last one repeated
        (default fast_lr, then fast_lr / 2); eval_seed: the seed of the held-out tasks
        (default the run's); device: where the policies run (default where each trained);
        actions: 'sampled' (the paper's protocol) or 'mean' (the policy's mean actions after
        each step, Meta-World's test protocol; adaptation still samples).
    save: write DIR/eval/ as ``maml-rl evaluate`` does, holding its lock throughout (an earlier
        evaluation with the same protocol keeps its other methods); out_dir: where to write
        instead of DIR/eval (a read-only run directory); report: receives progress lines and
        notes.

    Returns an `Evaluation`: ``returns[method]`` per-task mean returns [S + 1, N], ``means``
    their mean over tasks per step, ``rows`` the summary (mean, standard error, 95 % interval).

    >>> result = evaluate("runs/nav", num_tasks=40, baselines=["random"])  # doctest: +SKIP
    >>> result.means["maml"] - result.means["random"]  # doctest: +SKIP
    """
    configure_process(process_settings)
    run_dir = Path(run_dir)
    check_eval_seed(eval_seed)
    # DIR/eval is ours from loading the run to the last file written: a second evaluate (or a
    # train --overwrite) of the run is refused in one line
    out_dir = run_dir / "eval" if out_dir is None else Path(out_dir)
    with hold_eval_dir(out_dir) if save else contextlib.nullcontext():
        given = dict(baselines) if isinstance(baselines, Mapping) else dict.fromkeys(baselines)
        check_request(
            run_dir, num_steps, num_tasks, checkpoint, step_sizes, list(given), device, actions
        )
        if "oracle" in given:  # before any baseline trains: can this family have an oracle?
            cfg = load_run(run_dir, checkpoint).cfg
            OracleFamily(make_family(cfg.env, cfg.env_kwargs))
        dirs: dict[str, str | Path | None] = {}
        for name, path in given.items():
            if path is None and name != "random":
                path = baseline_run_dir(run_dir, name, train_baselines, device, progress, report)
            dirs[name] = path
        evaluation = evaluate_run(
            run_dir,
            dirs,
            num_steps=num_steps,
            num_tasks=num_tasks,
            which=checkpoint,
            step_sizes=step_sizes,
            eval_seed=eval_seed,
            device=device,
            actions=actions,
        )
        if save:
            save_evaluation(evaluation, out_dir, report=report)
        return evaluation
