"""The meta-training loop, top to bottom: seeds, build, iterate, log, checkpoint, resume."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maml_rl import artifacts, checkpoint, diagnostics, provenance
from maml_rl.build import Streams, build, check_built, describe_policy
from maml_rl.checker import SKIPPED
from maml_rl.checkpoint import CheckpointError
from maml_rl.config import Config, ConfigError, from_dict, from_saved, save
from maml_rl.errors import RunInterrupted, RunStopped, StopTraining
from maml_rl.inner import init_step_size, step_sizes_of
from maml_rl.logger import RunLogger, truncate_metrics
from maml_rl.maml import NonFiniteError, collect, draw_seeds, meta_step
from maml_rl.policy import parameters_of
from maml_rl.policy_adapter import policy_import_root
from maml_rl.promp import promp_step
from maml_rl.tasks import TaskFamily, add_import_root, import_root
from maml_rl.threads import AutoThreads, torch_threads
from maml_rl.types import Params
from maml_rl.vector import resolved_backend

LATEST, BEST = "checkpoint_latest.pt", "checkpoint_best.pt"
RUN_RECORD = "run.json"
"""What a run resolved at its start: the family, where a module:Class family was imported
from (`import_root`), and the sampler backend `auto` chose."""
MAX_CONSECUTIVE_SKIPS = 3


LOCK = artifacts.LOCK


@dataclass(frozen=True)
class IterationInfo:
    """What a training callback receives after each iteration, once it is checkpointed.

    A callback is ``callback(info) -> bool | None``: returning False, or raising
    `maml_rl.StopTraining`, ends the run cleanly after this iteration (it stays resumable with
    ``resume=True`` / ``maml-rl train --resume``); None or True carry on. The tensors are the
    run's own: read or clone them, never modify them in place.

    >>> def log_and_stop(info: IterationInfo) -> bool:
    ...     print(info.iteration, info.metrics["returns/post_update"])
    ...     return info.metrics["returns/post_update"] < -10  # stop once good enough
    """

    iteration: int
    """The iteration just completed, from 0 (as in metrics.jsonl)."""
    num_iterations: int
    """The run's num_batches."""
    metrics: dict[str, float]
    """The metrics row of the iteration (`returns/post_update`, `meta/kl_after`, ...)."""
    theta: Params
    """The meta-parameters after the iteration's outer step."""
    step_size: Params
    """The meta-learned inner step sizes (empty unless learn_step_size)."""
    run_dir: Path
    config: Config


Callback = Callable[[IterationInfo], bool | None]


def stop_reason(callbacks: Sequence[Callback], info: IterationInfo) -> str | None:
    """Call every callback; why the run should stop (a callback returned False or raised
    `StopTraining`), or None to go on."""
    reasons = []
    for callback in callbacks:
        try:
            if callback(info) is False:
                reasons.append(f"{getattr(callback, '__name__', 'a callback')} returned False")
        except StopTraining as stop:
            reasons.append(str(stop) or "StopTraining")
    return "; ".join(reasons) or None


@contextmanager
def hold_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Iterator[Callable[[], None]]:
    """Own `run_dir` while training, under its lock (`artifacts.locked` on `DIR/.lock`): a
    second process training into the same directory stops at once with a one-line error
    instead of interleaving checkpoints; the lock dies with its holder.

    A directory holds a run once it has a checkpoint: a new start there is refused unless asked
    to resume or overwrite it. A run directory without one (`run.json` only: a start that
    crashed or was killed before its first checkpoint) is a failed start, which a new start
    reuses. A non-empty directory that holds no run (a user's folder) is refused, even with
    --overwrite. Clearing a run deletes only what `maml_rl` writes there
    (`artifacts.RUN_ENTRIES`), never a user's other files.

    Yields `clear`, which empties the directory for a new start (nothing on resume): call it
    once the new run has been built and checked, so that a start refused for its config,
    policy, device or memory leaves an overwritten run as it was."""
    if resume and not (run_dir / LATEST).exists():
        raise CheckpointError(_nothing_to_resume(run_dir))
    if not resume and run_dir.is_dir():
        _refuse_a_user_folder(run_dir)  # before the lock file: a user's folder gets nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = f"another process is training in {run_dir}; wait for it to finish or stop it"
    with artifacts.locked(run_dir / LOCK, busy):
        if not resume:
            _refuse_to_replace(run_dir, overwrite)  # at once, before the run is built
        artifacts.remove_stale_temporaries(run_dir)  # left by a killed write
        yield (lambda: None) if resume else (lambda: _clear_for_start(run_dir, overwrite))


def _nothing_to_resume(run_dir: Path) -> str:
    if (run_dir / RUN_RECORD).exists():  # a start killed before its first checkpoint
        return (
            f"nothing to resume: {run_dir} holds a run that never completed an iteration (no "
            f"{LATEST}); start it again with: maml-rl train CONFIG --out {run_dir}"
        )
    return f"nothing to resume: {run_dir / LATEST} does not exist"


def _refuse_a_user_folder(run_dir: Path) -> None:
    """A one-line error if `run_dir` has entries but neither a checkpoint nor a run record
    (besides the lock and temporary files of a start killed while writing its run record)."""
    if (run_dir / LATEST).exists() or (run_dir / RUN_RECORD).exists():
        return
    entries = sorted(p.name for p in run_dir.iterdir() if not artifacts.is_run_temporary(p.name))
    entries = [name for name in entries if name != LOCK]
    if entries:
        names = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise CheckpointError(
            f"{run_dir} is not empty and holds no maml_rl run ({names}); give --out a new or "
            "empty directory"
        )


def _refuse_to_replace(run_dir: Path, overwrite: bool) -> None:
    """A one-line error if `run_dir` holds a run and `overwrite` is False, or is a user's
    folder."""
    if (run_dir / LATEST).exists() and not overwrite:
        raise CheckpointError(
            f"run directory {run_dir} already holds a run; pass --resume to continue it "
            "or --overwrite to replace it"
        )
    _refuse_a_user_folder(run_dir)


def _clear_for_start(run_dir: Path, overwrite: bool) -> None:
    """Make `run_dir` ready for a new run (see `hold_run_dir`), or a one-line error."""
    _refuse_to_replace(run_dir, overwrite)
    has_run = (run_dir / LATEST).exists()
    entries = sorted(p for p in run_dir.iterdir() if p.name != LOCK)
    with ExitStack() as held:  # every lock below it (evaluate, a baseline it trains)
        for lock_path in sorted(run_dir.glob(f"*/**/{LOCK}")):
            held.enter_context(artifacts.locked(lock_path, (
                f"cannot {'overwrite' if has_run else 'reuse'} {run_dir}: a process is using "
                f"{lock_path.parent} (evaluate, or a baseline it trains); wait for it to "
                "finish or stop it"
            )))  # fmt: skip
        for path in entries:
            if artifacts.is_run_entry(path.name):
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def describe_sampler(family: TaskFamily, cfg: Config) -> str:
    """The environment backend a run samples on, for its start-up line."""
    if cfg.sampler == "ray":
        return f"ray ({cfg.ray_num_actors} actors x {cfg.ray_actor_cpus} CPUs)"
    backend = resolved_backend(family, cfg.sampler, cfg.device)  # auto: warp on CUDA
    return backend if backend == cfg.sampler else f"{backend} (auto)"


RESUMABLE_KEYS = frozenset(
    {"num_batches", "sampler", "ray_address", "ray_num_actors", "ray_actor_cpus", "ray_timeout_s",
     "device", "torch_threads", "hvp", "check"}
)  # fmt: skip
"""Keys a resumed run may change: how long it runs and where and how it computes (`hvp`: every
mode computes the same curvature, the finite-difference one approximately). Every other key
defines the experiment (what is learned, its shapes, dtype, data and estimator)."""


def load_resume_config(run_dir: Path, overrides: dict[str, Any]) -> Config:
    """The config a run was started with, plus the overrides allowed on resume (num_batches,
    sampler, device: `RESUMABLE_KEYS`); any other key given with a new value is refused in one
    line that names it (overrides equal to the saved values are fine)."""
    if not (run_dir / LATEST).exists():
        raise CheckpointError(_nothing_to_resume(run_dir))
    state = checkpoint.load(run_dir / LATEST)
    add_import_root(state.get("import_root"))
    add_import_root(state.get("policy_import_root"))
    saved = from_saved(state["config"])
    cfg = from_dict(overrides, base=saved)
    done = state["iteration"] + 1
    if cfg.num_batches < done:  # never "iterations 4-1 of 1", nor a config.yaml saying 1
        raise CheckpointError(
            f"num_batches={cfg.num_batches} is fewer than the {done} iterations saved in "
            f"{run_dir}; give num_batches >= {done}"
        )
    changed = [
        f"{f.name}={getattr(cfg, f.name)!r} (the run has {getattr(saved, f.name)!r})"
        for f in dataclasses.fields(Config)
        if f.name not in RESUMABLE_KEYS and getattr(cfg, f.name) != getattr(saved, f.name)
    ]
    if changed:
        raise CheckpointError(
            f"cannot change {', '.join(changed)} when resuming {run_dir}; only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change: start a new run with --out"
        )
    return cfg


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
    check: bool = True,
    callbacks: Sequence[Callback] = (),
) -> list[dict[str, float]]:
    """Meta-train with MAML-TRPO into `run_dir` (held by `hold_run_dir`); returns the
    metrics rows written by this call. `callbacks` run after every checkpointed iteration
    (`IterationInfo`) and may stop the run."""
    run_dir = Path(run_dir)
    _check_start(cfg, run_dir)
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # what this call creates
    try:
        # torch's thread count (the config's, or AutoThreads' per phase) is the caller's again
        # afterwards: a notebook that trains keeps its own setting
        with hold_run_dir(run_dir, resume, overwrite) as clear, torch_threads(None):
            return _train(cfg, run_dir, resume, progress, tensorboard, check, callbacks, clear)
    except BaseException:
        # a start that failed (bad device, broken family, Ctrl-C) leaves no empty directory,
        # nor the empty parents it made (--out a/b/c)
        if made and run_dir.is_dir() and not (run_dir / LATEST).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            for parent in made[1:]:
                try:
                    parent.rmdir()  # only while empty
                except OSError:
                    break
        raise


def _check_start(cfg: Config, run_dir: Path) -> None:
    """One-line errors, before anything is created, for a run directory that is a file or a
    dangling link, and for more torch threads than the machine can run (4 per CPU)."""
    if run_dir.is_symlink() and not run_dir.exists():
        raise CheckpointError(f"{run_dir} is a dangling symbolic link; give a directory")
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a directory; give a directory")
    most = 4 * (os.cpu_count() or 1)
    if cfg.torch_threads is not None and cfg.torch_threads > most:
        raise ConfigError(
            f"config key 'torch_threads' must be at most {most} (4 per CPU of this machine), "
            f"got {cfg.torch_threads}"
        )


def _train(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    progress: bool,
    tensorboard: bool,
    check: bool,
    callbacks: Sequence[Callback],
    clear: Callable[[], None],
) -> list[dict[str, float]]:

    if cfg.torch_threads is not None:  # before any torch work of this run
        torch.set_num_threads(cfg.torch_threads)
    # null: every core alone, fewer beside other CPU-bound processes (threads.py)
    auto_threads = AutoThreads() if cfg.torch_threads is None else None

    # --- seeding: one seed, independent streams, no global RNG ---
    streams = Streams.from_seed(cfg.seed)

    # --- build: task family, policy, sampler, meta-parameters ---
    def report(message: str) -> None:  # faults a distributed sampler recovered from
        logger.message(message)

    family, policy, sampler = build(cfg, streams.policy_init, on_event=report)
    check = check and cfg.check  # train(check=False), --no-check or config key check: false
    if check:
        check_built(family, cfg)  # a broken family fails here, in one line
    clear()  # a new start replaces what the directory held only now (hold_run_dir)
    origin = import_root(cfg.env)  # where a module:Class family was found, for later loads
    policy_origin = policy_import_root(cfg.policy)  # and a module:callable policy
    # the run's record (provenance.py): first what it trains, then, once the first iteration
    # is known, this call's versions and machine beside the earlier calls'
    notes: list[str] = []
    calls = provenance.earlier_calls(run_dir / RUN_RECORD, notes.append) if resume else []
    sampler_text = describe_sampler(family, cfg)
    provenance.write(run_dir / RUN_RECORD, cfg.env, origin, sampler_text, calls)
    theta: Params = parameters_of(policy)
    step_size: Params = init_step_size(theta, cfg.learn_step_size, cfg.fast_lr, cfg.num_steps)
    start, env_steps, best_return = 0, 0, -float("inf")

    # --- resume: parameters, RNG streams and counters of the last complete iteration ---
    if resume:
        state = checkpoint.load(run_dir / LATEST, map_location=sampler.device)
        saved = from_saved(state["config"])
        if (saved.env, saved.hidden_sizes, saved.learn_step_size) != (
            cfg.env,
            cfg.hidden_sizes,
            cfg.learn_step_size,
        ):
            raise CheckpointError(f"checkpoint in {run_dir} was made with another config")
        checkpoint.check_parameters(state["theta"], theta, str(run_dir / LATEST))
        theta, step_size = state["theta"], state["step_size"]
        streams.restore(state["rng"])
        start, env_steps, best_return = (
            state["iteration"] + 1,
            state["env_steps"],
            state["best_return"],
        )
        truncate_metrics(run_dir, state["iteration"])
    calls.append(provenance.this_call(start))
    provenance.write(run_dir / RUN_RECORD, cfg.env, origin, sampler_text, calls)
    save(cfg, run_dir / "config.yaml")

    logger = RunLogger(
        run_dir,
        cfg.num_batches,
        start,
        cfg.to_dict(),
        progress,
        tensorboard,
        adapts=cfg.inner_steps > 0,
    )
    logger.message(
        f"{'resuming' if resume else 'training'} {cfg.algo} on {family!r} in {run_dir}: "
        f"iterations {start + 1}-{cfg.num_batches} of {cfg.num_batches}, "
        f"{cfg.meta_batch_size} tasks x {cfg.fast_batch_size} trajectories, "
        f"family check {'passed' if check else 'skipped'}, "
        f"sampler {sampler_text}, "
        f"policy {describe_policy(policy, cfg)}, "
        f"torch threads {torch.get_num_threads()}"
    )
    for note in notes:
        logger.message(note)
    if not check:
        logger.message(SKIPPED)
    rows: list[dict[str, float]] = []
    skipped = 0
    try:
        for iteration in range(start, cfg.num_batches):
            # --- collect: pre-update batches, adaptation, post-update batch ---
            t0 = time.perf_counter()
            tasks = family.sample_tasks(cfg.meta_batch_size, streams.tasks)
            seeds = draw_seeds(streams.environments, cfg.inner_steps + 1)
            step_sizes = step_sizes_of(step_size, cfg.fast_lr, cfg.inner_steps)
            traffic = getattr(sampler, "traffic", None)  # Ray: bytes through the object store
            sent, received = (traffic.total_sent, traffic.total_received) if traffic else (0, 0)
            try:
                data, adapted = collect(sampler, theta, tasks, step_sizes, seeds, cfg)
            except NonFiniteError as error:  # skip the iteration; theta and checkpoints untouched
                skipped += 1
                logger.message(f"iteration {iteration + 1} skipped: {error}")  # 1-based, as logged
                if skipped >= MAX_CONSECUTIVE_SKIPS:
                    stop = f"stopped after {skipped} consecutive iterations with non-finite data"
                    raise RunStopped(_saved(run_dir, f"{stop} (last: {error})")) from error
                continue
            skipped = 0
            t1 = time.perf_counter()

            adapt_metrics = (
                diagnostics.adaptation(sampler.policy, theta, adapted[-1], data.post)
                if adapted
                else {}
            )

            # --- outer step: TRPO on the post-adaptation surrogate ---
            outer_step = promp_step if cfg.outer == "promp" else meta_step
            threads = torch.get_num_threads()
            if auto_threads is not None:
                auto_threads.start()
            theta, step_size, info = outer_step(policy, theta, step_size, data, cfg)
            t2 = time.perf_counter()
            if auto_threads is not None:
                auto_threads.stop()  # the next iteration's threads

            # --- log ---
            batches = [batch for batch, _ in data.inner] + [data.post]
            env_steps += sum(batch.num_steps for batch in batches)
            metrics: dict[str, float] = {
                "returns/pre_update": float(batches[0].episode_returns.mean()),
                "returns/post_update": float(data.post.episode_returns.mean()),
                **{
                    f"returns/after_step_{i}": float(b.episode_returns.mean())
                    for i, b in enumerate(batches[1:-1], start=1)
                },
                **diagnostics.success_metrics(batches),
                **info.as_metrics(),
                "time/sampling_s": t1 - t0,
                "time/optimization_s": t2 - t1,
                "time/torch_threads": float(threads),
                "env_steps": float(env_steps),
                **diagnostics.exploration(theta, policy, batches[0]),
                **adapt_metrics,
                **diagnostics.step_sizes(step_size),
            }
            if traffic:
                metrics["sampler/bytes_sent"] = float(traffic.total_sent - sent)
                metrics["sampler/bytes_received"] = float(traffic.total_received - received)
            logger.log(iteration, metrics)
            rows.append(metrics)

            # --- checkpoint: latest every iteration, best by post-update return ---
            if not all(
                bool(torch.isfinite(p).all()) for p in (*theta.values(), *step_size.values())
            ):
                raise RunStopped(
                    f"non-finite parameters after iteration {iteration + 1}; not saved"
                )
            state = {
                "iteration": iteration,
                "theta": theta,
                "step_size": step_size,
                "rng": streams.state(),
                "config": cfg.to_dict(),
                "import_root": origin,
                "policy_import_root": policy_origin,
                "env_steps": env_steps,
                "best_return": max(best_return, metrics["returns/post_update"]),
            }
            # the best first: the latest records best_return, so a crash between the two writes
            # must leave the latest behind (the iteration is redone), never the best
            if metrics["returns/post_update"] > best_return:
                checkpoint.save_atomic(state, run_dir / BEST)
                best_return = metrics["returns/post_update"]
            checkpoint.save_atomic(state, run_dir / LATEST)

            # --- callbacks: the caller's logging and early stopping, once it is saved ---
            done = IterationInfo(
                iteration, cfg.num_batches, metrics, theta, step_size, run_dir, cfg
            )
            reason = stop_reason(callbacks, done)
            if reason is not None:
                logger.message(
                    _saved(run_dir, f"stopped after iteration {iteration + 1} ({reason})")
                )
                break
    except KeyboardInterrupt:
        raise RunInterrupted(_saved(run_dir, "interrupted")) from None
    finally:
        logger.close()
        sampler.close()
    if not (run_dir / LATEST).exists():  # every iteration was skipped
        raise RunStopped(_saved(run_dir, f"all {len(range(start, cfg.num_batches))} iterations "
                                         "skipped (non-finite data)"))  # fmt: skip
    return rows


def _saved(run_dir: Path, what: str) -> str:
    """`what`, and what the run directory holds: the last saved iteration and how to resume,
    or that nothing was saved."""
    if not (run_dir / LATEST).exists():
        return f"{what} before any iteration completed; nothing was saved in {run_dir}"
    done = checkpoint.load(run_dir / LATEST)["iteration"] + 1
    return (
        f"{what}; {done} iterations are saved in {run_dir / LATEST}; "
        f"resume with: maml-rl train --resume {run_dir}"
    )
