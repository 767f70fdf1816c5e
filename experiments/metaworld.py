"""Meta-World at the Meta-World+ MAML-TRPO protocol (the shipped `metaworld-*` configs): train,
measure held-out success during training, evaluate against pretrained and random, tabulate.

    python -m experiments.metaworld --runs ml1-push ml1-pick-place --seeds 0
    python -m experiments.metaworld --runs ml10 --seeds 0
    python -m experiments.metaworld --stage table

(from the repository's root). Run the same command again to resume a run where it stopped.

Layout under OUT (default experiments/results/metaworld):
- NAME/seedS: the MAML run (`maml_rl.train` with the config of RUNS[NAME]);
- NAME/seedS/test-curve/iteration-I: every `curve_every` iterations (and after the last), the
  held-out success of iteration I's parameters after 0 and 1 steps, with the mean actions
  (`maml_rl.evaluate(..., actions="mean")`) on `curve_tasks` test tasks: the meta-test curve.
  The meta-train curve is the run's own `success/pre_update` and `success/post_update`;
- NAME/seedS/eval: the final evaluation after 0..3 steps on `eval_tasks` test tasks, mean
  actions, against a pretrained policy (NAME/seedS/baselines/pretrained, trained for
  `pretrained` iterations) and a random initialisation;
- METAWORLD.md: the tables (`--stage table`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import maml_rl
from maml_rl.checkpoint import CheckpointError
from maml_rl.config import ConfigError
from maml_rl.errors import ResourceError
from maml_rl.evaluate import SummaryRow, summarize
from maml_rl.evaluation_files import read_task_returns
from maml_rl.logger import read_metrics
from maml_rl.results import paired_rows, run_cost

HERE = Path(__file__).resolve().parent
TRAIN_SUCCESS = ("success/pre_update", "success/post_update")


@dataclass(frozen=True)
class Spec:
    """One Meta-World experiment: a shipped config and how it is measured."""

    config: str
    curve_every: int
    """Iterations between two points of the held-out (meta-test) success curve."""
    curve_tasks: int
    eval_tasks: int
    pretrained: int
    """Iterations of the pretrained baseline: twice MAML's samples the same environment steps
    (a TRPO iteration samples one batch, a MAML iteration two)."""


# Sizes that fit a 2-core machine: a test-curve point of 10 tasks samples 200,000 steps
# (pre- and post-step batches sampled, and both again with the mean actions), about 100 s on
# one core; the final evaluation of 25 tasks after 0..3 steps 1 M steps per method.
RUNS: dict[str, Spec] = {
    "ml1-reach": Spec("metaworld-ml1-reach", 4, 10, 25, 40),
    "ml1-push": Spec("metaworld-ml1-push", 4, 10, 25, 40),
    "ml1-pick-place": Spec("metaworld-ml1-pick-place", 4, 10, 25, 40),
    "ml10": Spec("metaworld-ml10", 10, 10, 25, 100),  # pretrained: half MAML's steps
}


def curve_point(run_dir: Path, spec: Spec, iteration: int) -> None:
    """Held-out success of the run's latest parameters (iteration `iteration`) after 0 and 1
    steps into run_dir/test-curve/iteration-I, unless it is there already."""
    out = run_dir / "test-curve" / f"iteration-{iteration}"
    if (out / "success_tasks.csv").is_file():
        return
    maml_rl.evaluate(
        run_dir,
        num_steps=1,
        num_tasks=spec.curve_tasks,
        actions="mean",
        out_dir=out,
        progress=False,
        process_settings=False,
    )


def train(name: str, seed: int, out: Path, **overrides: object) -> Path:
    """Train (or resume) the MAML run of RUNS[name] at `seed`, with its test curve; overrides:
    config values of a new run. A curve point whose evaluation was killed is skipped."""
    spec = RUNS[name]
    run_dir = out / name / f"seed{seed}"

    def measure(info: maml_rl.IterationInfo) -> None:
        last = info.iteration + 1 == info.num_iterations
        if (info.iteration + 1) % spec.curve_every == 0 or last:
            curve_point(run_dir, spec, info.iteration)

    resume = (run_dir / "checkpoint_latest.pt").is_file()
    if resume:
        run = maml_rl.load_run(run_dir)
        if run.iteration + 1 >= run.cfg.num_batches:
            curve_point(run_dir, spec, run.iteration)  # a run stopped before its last point
            return run_dir
    config = None if resume else maml_rl.load_config(spec.config, seed=seed, **overrides)
    maml_rl.train(config, run_dir, callbacks=[measure], resume=resume, progress=False)
    return run_dir


def evaluate(name: str, run_dir: Path) -> None:
    """The final evaluation of a trained run (skipped if done)."""
    spec = RUNS[name]
    if (run_dir / "eval" / "success_tasks.csv").is_file():
        tasks = read_task_returns(run_dir / "eval" / "success_tasks.csv")
        if {"maml", "pretrained", "random"} <= set(tasks):
            return
    maml_rl.evaluate(
        run_dir,
        num_steps=3,
        num_tasks=spec.eval_tasks,
        baselines=["pretrained", "random"],
        train_baselines=spec.pretrained,
        actions="mean",
        progress=False,
        process_settings=False,
    )


def rate(row: SummaryRow) -> str:
    """A success rate: mean ± 95 % interval half-width, two decimals."""
    half = row.ci95_high - row.mean_return
    return f"{row.mean_return:.2f}" + ("" if math.isnan(half) else f" ± {half:.2f}")


def curve_table(run_dir: Path) -> str:
    """Per test-curve point: environment steps so far, meta-train success of that iteration's
    training batch before and after adaptation (sampled actions), and meta-test success after
    0 and 1 steps (mean actions, mean ± 95 % interval over the curve's tasks)."""
    rows = read_metrics(run_dir)
    lines = [
        "| iteration | env steps | meta-train success, pre / post | meta-test, 0 steps | 1 step |",
        "|---|---|---|---|---|",
    ]
    points = sorted(
        (int(p.name.removeprefix("iteration-")), p)
        for p in (run_dir / "test-curve").glob("iteration-*")
        if (p / "success_tasks.csv").is_file()
    )
    for iteration, path in points:
        if iteration >= len(rows):
            continue
        zero, one = summarize(read_task_returns(path / "success_tasks.csv")["maml"], "maml")
        pre, post = (rows[iteration][key] for key in TRAIN_SUCCESS)
        steps = rows[iteration]["env_steps"] / 1e6
        lines.append(
            f"| {iteration} | {steps:.1f} M | {pre:.2f} / {post:.2f} | {rate(zero)} | {rate(one)} |"
        )
    return "\n".join(lines)


def evaluation_table(run_dir: Path) -> str:
    """Held-out success (mean actions) of every method after 0..S steps, and maml − pretrained
    paired on the same tasks."""
    success = read_task_returns(run_dir / "eval" / "success_tasks.csv")
    num_steps = next(iter(success.values())).shape[0] - 1
    steps = [f"{s} step{'s' if s != 1 else ''}" for s in range(num_steps + 1)]
    lines = ["| method | " + " | ".join(steps) + " |", "|---|" + "---|" * (num_steps + 1)]
    for method, values in success.items():
        lines.append(f"| {method} | " + " | ".join(rate(r) for r in summarize(values)) + " |")
    if {"maml", "pretrained"} <= set(success):
        paired = paired_rows([success])
        lines.append("| maml − pretrained (paired) | " + " | ".join(rate(r) for r in paired) + " |")
    return "\n".join(lines)


def section(name: str, run_dir: Path) -> str:
    """The Markdown section of one run: its cost, its curves and its final evaluation."""
    spec = RUNS[name]
    cost = run_cost(run_dir)
    record = run_dir / "eval" / "evaluation.json"
    parts = [
        f"## {name}, seed {run_dir.name.removeprefix('seed')} (`experiments/{spec.config}.yaml`)",
        "",
        f"{cost.iterations} iterations, {cost.env_steps / 1e6:.1f} M environment steps, "
        f"{cost.wall_s / 3600:.2f} h of sampling and optimisation "
        f"({cost.wall_s / max(cost.iterations, 1):.0f} s per iteration).",
        "",
        f"Test curve: every {spec.curve_every} iterations, {spec.curve_tasks} held-out tasks, "
        "mean actions.",
        "",
        curve_table(run_dir),
    ]
    if record.is_file():
        protocol = json.loads(record.read_text())
        parts += [
            "",
            f"Final evaluation: {protocol['num_tasks']} held-out tasks (eval seed "
            f"{protocol['eval_seed']}), K = {protocol['num_trajectories']}, step sizes "
            f"{protocol['step_sizes']}, success of the {protocol.get('actions', 'sampled')} "
            f"actions; pretrained: {spec.pretrained} TRPO iterations.",
            "",
            evaluation_table(run_dir),
        ]
    return "\n".join(parts)


def write_table(out: Path) -> Path:
    """OUT/METAWORLD.md from every run found under OUT (NAME/seedS with metrics)."""
    sections = [
        section(name, run_dir)
        for name in RUNS
        for run_dir in sorted((out / name).glob("seed*"))
        if (run_dir / "metrics.jsonl").is_file()
    ]
    path = out / "METAWORLD.md"
    header = (
        "# Meta-World at the Meta-World+ MAML-TRPO protocol\n\n"
        "Written by `python -m experiments.metaworld --stage table`. Success = Meta-World's "
        '`info["success"]` at any step of an episode; intervals are 95 % Student-t over tasks.\n'
    )
    path.write_text(header + "\n" + "\n\n".join(sections) + "\n")
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=["ml1-push"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--stage", choices=("all", "train", "table"), default="all")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "metaworld")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.stage != "table":
            for name in args.runs:
                for seed in args.seeds:
                    run_dir = train(name, seed, args.out)
                    if args.stage == "all":
                        evaluate(name, run_dir)
        print(f"wrote {write_table(args.out)}")
    except (ConfigError, CheckpointError, ResourceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
