"""Command line: `maml-rl train | envs`. Wiring only; user mistakes end in one line, exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maml_rl import config as config_module
from maml_rl.checkpoint import CheckpointError
from maml_rl.config import Config, ConfigError
from maml_rl.tasks import TaskFamilyError, available_families, make_family

USER_ERRORS = (ConfigError, CheckpointError, TaskFamilyError)
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def find_config(name: str) -> Path:
    """A YAML path, or the name of a config shipped in `experiments/` (e.g. `navigation`)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    for folder in (Path.cwd() / "experiments", EXPERIMENTS):
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
    raise ConfigError(f"no config named '{name}'; shipped configs: {', '.join(shipped) or 'none'}")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = dict(config_module.parse_override(item) for item in args.set or [])
    if args.seed is not None:
        values["seed"] = args.seed
    if args.device is not None:
        values["device"] = args.device
    if getattr(args, "algo", None) is not None:
        values["algo"] = args.algo
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from maml_rl.train import load_resume_config, train

    overrides = _overrides(args)
    if args.resume is not None:
        run_dir = Path(args.resume)
        cfg = load_resume_config(run_dir, overrides)
    else:
        if args.config is None or args.out is None:
            raise ConfigError("train needs CONFIG and --out DIR (or --resume DIR)")
        run_dir = Path(args.out)
        cfg = config_module.load(find_config(args.config), overrides)
    train(
        cfg,
        run_dir,
        resume=args.resume is not None,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"run saved in {run_dir}")
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    for name, target in sorted(available_families().items()):
        try:
            description = repr(make_family(name))
        except Exception as error:  # a broken plug-in must not hide the others
            description = f"cannot be built: {error}"
        print(f"{name:24s} {target:40s} {description}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="maml-rl", description="MAML for reinforcement learning")
    root.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = root.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="meta-train a policy")
    train.add_argument("config", nargs="?", help="YAML file or name of a config in experiments/")
    train.add_argument("--out", help="run directory (checkpoints, metrics.jsonl, TensorBoard)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="cpu or cuda")
    train.add_argument(
        "--algo",
        choices=("maml", "pretrained", "oracle"),
        help="maml (default), or a baseline trained by plain TRPO: pretrained, oracle",
    )
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=cmd_train)

    envs = commands.add_parser("envs", help="list registered task families")
    envs.set_defaults(func=cmd_envs)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"maml-rl: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["Config", "main"]
