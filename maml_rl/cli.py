"""Command line: `maml-rl train | evaluate | compare | plot | render | check | configs | envs`.

Wiring only. Every failure that is not a bug ends in one line on stderr, from `main`: a user's
mistake (USER_ERRORS, and a path that cannot name what the command needs: `path_mistake`)
exits 2; a failure of the machine (a full disk, a read-only directory, too few file
descriptors, memory that cannot be allocated, a path that is not UTF-8: `machine_failure`)
exits 1; Ctrl-C exits 130 and SIGTERM 143, both after the run's `finally`
blocks closed its loggers and samplers, saying what was saved."""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from maml_rl import config as config_module
from maml_rl.config import Config, ConfigError
from maml_rl.configs import find_config, shipped_config_descriptions
from maml_rl.errors import (
    CheckpointError,
    NonFiniteError,
    PolicyError,
    RaySamplerError,
    ResourceError,
    RunStopped,
    TaskFamilyError,
    os_error_in,
)
from maml_rl.interrupts import interrupt_handling
from maml_rl.runtime import configure_process

# Commands import torch, Gymnasium and the task families inside their functions: `--help` and
# argument errors answer at once, and `main` applies the process-wide settings before torch
# loads (maml_rl/runtime.py).

USER_ERRORS = (
    ConfigError,
    CheckpointError,
    PolicyError,
    TaskFamilyError,
    RunStopped,
    RaySamplerError,
    ResourceError,
    NonFiniteError,
)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    # a later --set overrides an earlier one; a key twice in one --set is a mistake
    for group in args.set or []:
        pairs = [config_module.parse_override(item) for item in group]
        keys = [config_module.normalize_key(key) for key, _ in pairs]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise ConfigError(f"--set gives {', '.join(twice)} twice; give each key once")
        values.update(pairs)
    if args.seed is not None:
        values["seed"] = args.seed
    if getattr(args, "device", None) is not None:
        values["device"] = args.device
    if getattr(args, "algo", None) is not None:
        values["algo"] = args.algo
    return values


def _completed_iterations(run_dir: Path) -> int | None:
    """How many iterations the run's latest checkpoint holds; None without one (a failed
    start, which `train` reports itself)."""
    from maml_rl.evaluate import load_run

    try:
        return load_run(run_dir).iteration + 1
    except CheckpointError:
        return None


def _duration(seconds: float) -> str:
    """12.3 s, 9 min 05 s, 2 h 07 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def closing_lines(run_dir: Path, algo: str, seconds: float) -> list[str]:
    """The end of `maml-rl train`: where the run is and how long this call took, the final and
    the best (post-update) return with their iterations (1-based, as in the progress line),
    and the command to run next."""
    import math

    from maml_rl.logger import POST_UPDATE, read_metrics

    rows = [r for r in read_metrics(run_dir) if math.isfinite(r.get(POST_UPDATE, math.nan))]
    lines = [f"run saved in {run_dir} (this call: {_duration(seconds)})"]
    if rows:
        last, best = rows[-1], max(rows, key=lambda r: r[POST_UPDATE])
        name = "post-update return" if algo == "maml" else "return"
        lines.append(
            f"{name}: final {last[POST_UPDATE]:.2f} (iteration {last['iteration'] + 1}), "
            f"best {best[POST_UPDATE]:.2f} (iteration {best['iteration'] + 1})"
        )
    command = "evaluate" if algo == "maml" else "plot"
    lines.append(f"next: maml-rl {command} {run_dir}")
    return lines


def cmd_train(args: argparse.Namespace) -> int:
    import time

    from maml_rl.api import train
    from maml_rl.train import load_resume_config

    overrides = _overrides(args)
    if args.resume is not None:
        ignored = [name for name, given in (("CONFIG", args.config), ("--out", args.out),
                   ("--overwrite", args.overwrite)) if given]  # fmt: skip
        if ignored:
            raise ConfigError(
                f"--resume DIR continues the run in DIR with its own config; leave out "
                f"{' and '.join(ignored)} (--set changes what may change on resume)"
            )
        run_dir = Path(args.resume)
        cfg = load_resume_config(run_dir, overrides)
        done = _completed_iterations(run_dir)
        if done is not None and done >= cfg.num_batches:
            print(
                f"the run in {run_dir} is complete ({done} of {cfg.num_batches} iterations); "
                f"to train it further: maml-rl train --resume {run_dir} "
                f"--set num_batches={2 * done}"
            )
            return 0
    else:
        if args.config is None or args.out is None:
            raise ConfigError("train needs CONFIG and --out DIR (or --resume DIR)")
        run_dir = Path(args.out)
        notes: list[str] = []
        cfg = config_module.load(find_config(args.config), overrides, notes=notes)
        for note in notes:
            print(note)
    started = time.monotonic()
    train(
        cfg,
        run_dir,
        resume=args.resume is not None,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        check=not args.no_check,
    )
    for line in closing_lines(run_dir, cfg.algo, time.monotonic() - started):
        print(line)
    return 0


def _comma_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _numbers(text: str | None, kind: type, flag: str, example: str) -> list:
    """The comma-separated numbers of `flag` (none if it is not given); an empty item (`0.1,,0.2`)
    or a word is a one-line ConfigError."""
    items = [item.strip() for item in text.split(",")] if text else []
    try:
        if "" in items:
            raise ValueError("an empty item")
        return [kind(item) for item in items]
    except ValueError:
        raise ConfigError(f"{flag} expects numbers like {example}, got {text!r}") from None


def _step_sizes(text: str | None) -> list[float]:
    return _numbers(text, float, "--step-sizes", "0.1,0.05")


def methods_line(counts: dict[str, int | None]) -> str:
    """What the table compares: 'trained iterations: maml 500, pretrained 20 (fewer than
    maml), random none (an initialisation)'."""
    maml = counts.get("maml")
    parts = []
    for name, count in counts.items():
        if name == "random":
            parts.append("random none (an initialisation)")
            continue
        text = f"{name} {count if count is not None else '?'}"
        if name != "maml" and maml is not None and count is not None and count < maml:
            text += " (fewer than maml)"
        parts.append(text)
    return "trained iterations: " + ", ".join(parts)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from maml_rl.api import evaluate
    from maml_rl.evaluate import RAN_ON, format_table, mixed_devices_note
    from maml_rl.evaluation_files import PROTOCOL

    run_dir = Path(args.run_dir)
    given = {"pretrained": args.pretrained, "oracle": args.oracle}
    names = _comma_list(args.baselines)
    names += [name for name, path in given.items() if path is not None and name not in names]
    evaluation = evaluate(
        run_dir,
        num_steps=args.num_steps,
        num_tasks=args.num_tasks,
        checkpoint=args.checkpoint,
        baselines={name: given.get(name) for name in names},
        train_baselines=args.train_baselines,
        step_sizes=_step_sizes(args.step_sizes),
        eval_seed=args.eval_seed,
        device=args.device,
        actions=args.actions,
        out_dir=args.out,
        progress=not args.no_progress,
        report=print,
        process_settings=False,  # applied by main
    )
    out_dir = run_dir / "eval" if args.out is None else Path(args.out)
    schedule = ", ".join(f"{a:g}" for a in evaluation.step_sizes) or "none"
    learned = "; maml uses its meta-learned step sizes" if evaluation.learned_step_size else ""
    print(
        f"{evaluation.env}: {evaluation.rows[0].num_tasks} held-out tasks "
        f"(eval seed {evaluation.eval_seed}), K={evaluation.num_trajectories}, "
        f"step sizes [{schedule}]{learned}"
        + ("; measured with the mean actions" if evaluation.actions == "mean" else "")
    )
    print(methods_line({method: evaluation.trained.get(method) for method in evaluation.returns}))
    print(format_table(evaluation.rows))
    if evaluation.success:
        print(format_table(evaluation.success_rows, "success rate"))
    record = json.loads((out_dir / PROTOCOL).read_text())
    note = mixed_devices_note(record.get(RAN_ON, {}))
    if note:
        print(note)
    print(f"wrote {out_dir / 'adaptation.csv'} and {out_dir / 'adaptation.png'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from maml_rl.compare import evaluation_folder, load_evaluation, paired_difference
    from maml_rl.evaluate import format_table

    a, b = load_evaluation(args.run_a), load_evaluation(args.run_b)
    rows_a, rows_b, diff = paired_difference(a, b, args.method, args.success, args.own_step_sizes)
    protocol = a.protocol
    print(
        f"{protocol.get('env')}: {diff[0].num_tasks} held-out tasks "
        f"(eval seed {protocol.get('eval_seed')}), paired per task"
    )
    for name, run in (("A", a), ("B", b)):
        sizes = run.protocol.get("step_sizes")
        own = f", step sizes {sizes}" if args.own_step_sizes and sizes is not None else ""
        print(f"{name} = {run.run_dir} ({run.protocol.get('checkpoint')}{own})")
    print(
        format_table([*rows_a, *rows_b, *diff], "success rate" if args.success else "mean return")
    )
    if (
        evaluation_folder(Path(args.run_a)).resolve()
        == evaluation_folder(Path(args.run_b)).resolve()
    ):
        print("note: A and B are the same evaluation, so every difference is 0")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from maml_rl.plot import plot_training

    run_dirs = [Path(d) for d in args.run_dirs]
    if args.out is None and len(run_dirs) > 1:
        raise ConfigError("plotting several runs needs --out FILE")
    out = Path(args.out) if args.out is not None else run_dirs[0] / "training.png"
    print(f"wrote {plot_training(run_dirs, out, smooth=args.smooth)}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    import os

    try:  # MuJoCo loads its OpenGL backend (MUJOCO_GL) on import: fail here, in one line
        import mujoco  # noqa: F401
    except Exception as error:
        raise ConfigError(
            f"MuJoCo cannot load its OpenGL backend (MUJOCO_GL={os.environ.get('MUJOCO_GL')}): "
            f"{type(error).__name__}: {error}; set MUJOCO_GL=egl (package libegl1) or "
            "MUJOCO_GL=osmesa (package libosmesa6)"
        ) from None
    from maml_rl.render import adaptation_clips, default_suffix, render

    if args.task is not None and args.num_tasks is not None:
        raise ConfigError("give --task I or --num-tasks N, not both")
    steps = _numbers(args.steps, int, "--steps", "0,1,3")
    count = 1 if args.num_tasks is None else args.num_tasks  # 0 is refused, not read as 1
    first, count = (args.task, 1) if args.task is not None else (0, count)
    clips = adaptation_clips(
        args.run_dir,
        steps,
        first,
        count,
        args.checkpoint,
        args.eval_seed,
        args.eval_tasks,
        device=args.device,
        actions=args.actions,
    )
    out = Path(args.out) if args.out else (
        Path(args.run_dir) / "render" / f"tasks{first}-{first + count - 1}"
        f"_steps{'-'.join(map(str, clips.steps))}{default_suffix(clips.family)}"
    )  # fmt: skip
    print(f"wrote {render(clips, out, args.trajectory, stride=args.stride)}")
    return 0


SIZE_KEYS = {"meta_batch_size", "fast_batch_size", "num_steps", "hidden_sizes", "dtype"}
"""The config keys the memory estimate of a run depends on (maml_rl/memory.py)."""


def cmd_check(args: argparse.Namespace) -> int:
    """Check a family (name or module:Class) or a config's family with its policy: what
    `train` checks before its first iteration (`build.preflight`)."""
    from maml_rl.build import preflight
    from maml_rl.tasks import available_families

    overrides = _overrides(args)
    check_sizes = True
    if args.target in available_families() or ":" in args.target:
        cfg = config_module.from_dict({"env": args.target, **overrides})
        # a bare family's sizes are the defaults, not a run's: their memory is checked only
        # where --set gives some
        check_sizes = bool(SIZE_KEYS & overrides.keys())
    else:  # a config: its family, kwargs, policy and sizes
        cfg = config_module.load(find_config(args.target), overrides)
    family = preflight(cfg, check_sizes=check_sizes)
    policy = "the built-in MLP" if cfg.policy is None else cfg.policy
    print(f"{family!r} with {policy} policy: all checks passed")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    """The shipped configs, each with what it trains (its YAML's opening comment)."""
    for name, description in shipped_config_descriptions().items():
        print(f"{name:26s} {description}")
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from maml_rl.tasks import available_families, make_family

    for name, target in sorted(available_families().items()):
        try:
            description = repr(make_family(name))
        except Exception as error:  # a broken plug-in must not hide the others
            description = f"cannot be built: {error}"
        print(f"{name:24s} {target:40s} {description}")
    return 0


def version_line() -> str:
    """``maml-rl 0.1.0 (Python 3.11.7, torch 2.13.0, gymnasium 1.4.0, mujoco 4.0.0, numpy ...)``:
    the installed versions, read from the packages' metadata without importing them."""
    from maml_rl.machine import PACKAGES, versions

    found = versions()
    packages = ", ".join(f"{name} {found[name]}" for name in PACKAGES)
    return f"maml-rl {found['maml-rl']} (Python {found['python']}, {packages})"


class _VersionAction(argparse.Action):
    """``--version``: print `version_line` and exit (looked up only when asked for)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_line())
        parser.exit()


def _path(text: str) -> str:
    """A path argument: an empty one (``--out ""``) is refused, not read as the current
    directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or directory name")
    return text


def _count(text: str) -> int:
    """A count argument: an integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _index(text: str) -> int:
    """An index argument: an integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


class _OneLineParser(argparse.ArgumentParser):
    """argparse's parser with its errors in one line (argparse prints the usage first): the
    command, the error, and where the usage is; exit status 2, as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    root = _OneLineParser(prog="maml-rl", description="MAML for reinforcement learning")
    root.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    root.add_argument(
        "--version",
        action=_VersionAction,
        help="print the versions of maml-rl, torch, gymnasium, mujoco and numpy, and exit",
    )
    commands = root.add_subparsers(dest="command", required=True)

    shipped = ", ".join(shipped_config_descriptions())
    train = commands.add_parser(
        "train",
        help="meta-train a policy",
        epilog=f"shipped configs (maml-rl configs says what each trains): {shipped}",
    )
    train.add_argument(
        "config",
        nargs="?",
        type=_path,
        help="YAML file or the name of a shipped config (maml-rl configs)",
    )
    train.add_argument(
        "--out", type=_path, help="run directory (checkpoints, metrics.jsonl, TensorBoard)"
    )
    train.add_argument("--resume", type=_path, metavar="DIR", help="continue the run in DIR")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="cpu or cuda")
    train.add_argument(
        "--algo",
        choices=("maml", "pretrained", "oracle"),
        help="maml (default), or a baseline trained by plain TRPO: pretrained, oracle",
    )
    train.add_argument(
        "--set",
        action="append",
        nargs="+",
        metavar="KEY=VALUE",
        help="override config keys: --set fast_lr=0.05 num_batches=100 (or one --set per pair)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--no-check",
        action="store_true",
        help="skip the task-family check (maml-rl check) for a family it wrongly refuses; "
        "the run says what went unchecked (config key check: false does the same)",
    )
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="adaptation curves on held-out tasks, against baselines",
        description="Average return after 0..S gradient steps on held-out tasks (Finn et al. "
        "2017, Fig. 5); writes DIR/eval/adaptation.csv and DIR/eval/adaptation.png.",
    )
    evaluate.add_argument("run_dir", type=_path, metavar="DIR", help="a MAML run directory")
    evaluate.add_argument(
        "--num-steps", type=int, default=3, metavar="S", help="gradient steps (default 3)"
    )
    evaluate.add_argument(
        "--num-tasks", type=int, default=40, metavar="N", help="held-out tasks (default 40)"
    )
    evaluate.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="latest",
        help="which checkpoint of each run (default latest)",
    )
    evaluate.add_argument(
        "--baselines",
        metavar="LIST",
        default="",
        help="comma-separated baselines among pretrained,random,oracle (default none)",
    )
    evaluate.add_argument(
        "--pretrained", type=_path, metavar="DIR", help="a pretrained run (implies the baseline)"
    )
    evaluate.add_argument(
        "--oracle", type=_path, metavar="DIR", help="an oracle run (implies the baseline)"
    )
    evaluate.add_argument(
        "--train-baselines",
        type=_count,
        metavar="N",
        help="train (or resume) baselines without a DIR for N iterations in DIR/baselines/NAME",
    )
    evaluate.add_argument(
        "--step-sizes",
        metavar="LIST",
        help="inner step sizes, last one repeated (default fast_lr, then fast_lr/2: 0.1,0.05)",
    )
    evaluate.add_argument(
        "--eval-seed",
        type=int,
        metavar="N",
        help="seed of the held-out tasks and environments (default: the run's seed)",
    )
    evaluate.add_argument(
        "--device", help="cpu or cuda: where the policies run (default: where each trained)"
    )
    evaluate.add_argument(
        "--actions",
        choices=("sampled", "mean"),
        default="sampled",
        help="measure the sampled actions after each step (default) or the mean ones "
        "(Meta-World's test protocol; adaptation still samples)",
    )
    evaluate.add_argument(
        "--out",
        type=_path,
        metavar="DIR",
        help="write the evaluation files here instead of DIR/eval (e.g. a read-only run)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")
    evaluate.set_defaults(func=cmd_evaluate)

    compare = commands.add_parser(
        "compare",
        help="paired difference of two evaluated runs on the same held-out tasks (A − B)",
    )
    compare.add_argument(
        "run_a",
        type=_path,
        metavar="DIR_A",
        help="an evaluated run directory, or the folder an evaluation was written to (--out)",
    )
    compare.add_argument(
        "run_b", type=_path, metavar="DIR_B", help="another, evaluated the same way"
    )
    compare.add_argument("--method", default="maml", help="which method's returns (default maml)")
    compare.add_argument(
        "--success", action="store_true", help="compare success rates instead of returns"
    )
    compare.add_argument(
        "--own-step-sizes",
        action="store_true",
        help="compare runs that adapted with different step sizes (multi-step or meta-learned "
        "ones) on the same held-out tasks: the difference is then of the whole adaptations",
    )
    compare.set_defaults(func=cmd_compare)

    plot = commands.add_parser("plot", help="training curves of one or several runs")
    plot.add_argument("run_dirs", nargs="+", type=_path, metavar="DIR", help="run directories")
    plot.add_argument(
        "--out",
        type=_path,
        metavar="FILE",
        help="PNG file (default DIR/training.png; required for several runs)",
    )
    plot.add_argument(
        "--smooth",
        type=_count,
        default=10,
        metavar="N",
        help="moving average over N iterations, over the raw returns (default 10; 1: raw only)",
    )
    plot.set_defaults(func=cmd_plot)

    show = commands.add_parser(
        "render",
        help="watch adaptation: video (MuJoCo) or trajectory plot (navigation) per step",
        description="Show the MAML run in DIR on held-out tasks after each of --steps gradient "
        "steps, with evaluate's tasks, seeds and step sizes: a PNG of the trajectories for 2D "
        "navigation (one row per task, one panel per step), a GIF or MP4 (extra render) of "
        "trajectory K for MuJoCo and Meta-World families, the clips of a task side by side.",
    )
    show.add_argument("run_dir", type=_path, metavar="DIR", help="a MAML run directory")
    show.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    show.add_argument("--task", type=_index, metavar="I", help="held-out task I (default 0)")
    show.add_argument("--num-tasks", type=_count, metavar="N", help="held-out tasks 0..N-1")
    show.add_argument("--steps", default="0,1,3", help="gradient steps to show (default 0,1,3)")
    show.add_argument("--trajectory", type=_index, default=0, help="which of the K trajectories")
    show.add_argument(
        "--out", type=_path, metavar="FILE", help=".mp4 / .gif (MuJoCo) or .png (drawn)"
    )
    show.add_argument("--stride", type=_count, default=1, help="video: keep every N-th frame")
    show.add_argument("--eval-seed", type=int, metavar="N", help="as in evaluate")
    show.add_argument(
        "--eval-tasks", type=_count, default=40, metavar="N", help="held-out set size (evaluate's)"
    )
    show.add_argument("--device", help="cpu or cuda (default: where the run trained)")
    show.add_argument(
        "--actions",
        choices=("sampled", "mean"),
        default="sampled",
        help="show the sampled episodes (default) or the mean-action ones, as in evaluate",
    )
    show.set_defaults(func=cmd_render)

    check = commands.add_parser(
        "check", help="check a task family (or a config's) before training with it"
    )
    check.add_argument(
        "target",
        type=_path,
        metavar="FAMILY_OR_CONFIG",
        help="family name, module:Class, or config",
    )
    check.add_argument("--seed", type=int, default=None, help="seed of the checks (default 0)")
    check.add_argument(
        "--set",
        nargs="+",
        action="append",
        metavar="KEY=VALUE",
        help="config overrides, as for train (e.g. policy=my_module:MyPolicy env_kwargs={...})",
    )
    check.set_defaults(func=cmd_check)

    configs = commands.add_parser(
        "configs", help="list the shipped configs (maml-rl train NAME) and what each trains"
    )
    configs.set_defaults(func=cmd_configs)

    envs = commands.add_parser("envs", help="list registered task families")
    envs.set_defaults(func=cmd_envs)
    return root


def machine_failure(error: BaseException) -> str | None:
    """One line naming what failed, for a failure of the machine rather than of the code: an
    OSError with an errno (ENOSPC, EROFS, EACCES, EMFILE, ...), memory that cannot be
    allocated (MemoryError, torch's allocator failures), a path or text that cannot be encoded
    (a directory name with a non-UTF-8 byte); None for anything else (a bug: traceback)."""
    cause = os_error_in(error)  # also one that a library's own error hides
    if cause is not None:
        number = cause.errno  # not None: os_error_in returns only an OSError with an errno
        code = errno.errorcode.get(number, str(number)) if number is not None else "?"
        where = " and ".join(repr(str(f)) for f in (cause.filename, cause.filename2) if f)
        hint = "; raise `ulimit -n` or sample with fewer processes" * (code == "EMFILE")
        return f"{cause.strerror or cause} ({code}){f': {where}' if where else ''}{hint}"
    text = " ".join(str(error).split())
    allocating = ("can't allocate memory", "out of memory", "Cannot allocate memory")
    if isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and any(words in text for words in allocating)
    ):
        detail = text[:200] or type(error).__name__
        return f"out of memory ({detail}); make the run smaller or raise the memory limit"
    if isinstance(error, UnicodeEncodeError):
        shown = repr(error.object[:200])
        return f"cannot encode {shown} as {error.encoding} ({error.reason}); rename it"
    return None


PATH_MISTAKES = frozenset({errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP})
"""Errors of a path that cannot name what the command needs (a name too long, a file where
a directory belongs or the reverse, a loop of links): the user's mistake, exit 2."""


def path_mistake(error: BaseException) -> bool:
    cause = os_error_in(error)
    return cause is not None and cause.errno in PATH_MISTAKES


def main(argv: Sequence[str] | None = None) -> int:
    configure_process()  # before any command imports torch (MAML_RL_PROCESS_SETTINGS=off: not)
    args = parser().parse_args(argv)
    with interrupt_handling() as interrupts:
        try:
            return int(args.func(args))
        except USER_ERRORS as error:
            if args.debug:
                raise
            print(f"maml-rl: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM: say what was saved, and stop
            if args.debug:
                raise
            what = str(error) or "interrupted"
            if interrupts.terminated:
                print(f"maml-rl: terminated (SIGTERM): {what}", file=sys.stderr)
                return 128 + int(signal.SIGTERM)
            print(f"maml-rl: {what}", file=sys.stderr)
            return 130
        except Exception as error:
            line = machine_failure(error)
            if line is None or args.debug:
                raise
            print(f"maml-rl: error: {line}", file=sys.stderr)
            return 2 if path_mistake(error) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["Config", "main"]
