"""Multi-step adaptation: meta-train with 2 or 3 inner steps (and the switches that may keep
later steps from overshooting), evaluate after 0..5 steps, and compare with the 1-step runs.

    python -m experiments.multistep --task navigation --variants steps3 steps3-per-step \\
        --seeds 0 1 2 --jobs 2
    python -m experiments.multistep --stage table

(from the repository's root).

Each variant is a config and overrides (VARIANTS). A run lives in OUT/TASK/VARIANT-seedS and
is resumed where it stopped; its evaluation (`maml-rl evaluate --num-steps 5`, on the held-out
tasks of its seed, the same as the 1-step run of that seed) in its eval/ folder. The 1-step
reference is the committed reproduction run of the same seed (`--reference`), evaluated after
0..5 steps into OUT/TASK/steps1-seedS-eval. The table (OUT/MULTISTEP.md) pools each variant's
seeds per step (mean ± 95% interval, median), the paired difference against the 1-step runs
on the same tasks, whether the mean improves at every step from 0 to 3, and the cost per
iteration.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.reproduce import (
    Job,
    ReproduceError,
    iterations_done,
    run_jobs,
    run_script,
    train_job,
)
from maml_rl.evaluate import SummaryRow
from maml_rl.evaluation_files import read_task_returns
from maml_rl.plot import plot_adaptation
from maml_rl.results import format_cell, median_rows, paired_rows, pooled_rows, run_cost

HERE = Path(__file__).resolve().parent
EVAL_STEPS = 5
MONOTONE_STEPS = 3  # the goal: the mean improves at every step from 0 to 3


@dataclass(frozen=True)
class Variant:
    """A configuration to meta-train: a shipped config and `--set` overrides."""

    config: str
    overrides: tuple[str, ...]
    about: str


VARIANTS: dict[str, dict[str, Variant]] = {
    "navigation": {
        "steps2": Variant(
            "navigation-steps2", (), "two inner steps of 0.1 (`experiments/navigation-steps2.yaml`)"
        ),
        "steps3": Variant("navigation", ("num_steps=3",), "three inner steps of 0.1"),
        "steps3-scalar": Variant(
            "navigation-steps3",
            (),
            "three inner steps, one meta-learned step size (`experiments/navigation-steps3.yaml`)",
        ),
        "steps3-per-step": Variant(
            "navigation",
            ("num_steps=3", "learn_step_size=per_step"),
            "three inner steps, a meta-learned step size per step",
        ),
        "steps3-lvc": Variant(
            "navigation",
            ("num_steps=3", "meta_gradient=lvc"),
            "three inner steps, ProMP's LVC meta-gradient",
        ),
        "steps3-min-std": Variant(
            "navigation",
            ("num_steps=3", "min_std=0.2"),
            "three inner steps, σ ≥ 0.2",
        ),
    },
    "halfcheetah-vel": {
        "steps2": Variant("halfcheetah-vel", ("num_steps=2",), "two inner steps of 0.1"),
        "steps3": Variant("halfcheetah-vel", ("num_steps=3",), "three inner steps of 0.1"),
        "steps3-scalar": Variant(
            "halfcheetah-vel",
            ("num_steps=3", "learn_step_size=scalar"),
            "three inner steps, one meta-learned step size",
        ),
    },
}


def run_dir(out: Path, task: str, variant: str, seed: int) -> Path:
    return out / task / f"{variant}-seed{seed}"


def evaluate_job(name: str, target: Path, eval_dir: Path, after: list[str], num_tasks: int) -> Job:
    """Evaluate `target` after 0..EVAL_STEPS steps on `num_tasks` held-out tasks into
    `eval_dir` (done if already there for the run's current iteration)."""
    record = eval_dir / "multistep.json"
    wanted = {
        "iteration": iterations_done(target) - 1,
        "num_steps": EVAL_STEPS,
        "num_tasks": num_tasks,
    }
    recorded = json.loads(record.read_text()) if record.exists() else {}
    finished = all(recorded.get(key) == value for key, value in wanted.items())
    argv = ["evaluate", str(target), "--num-steps", str(EVAL_STEPS), "--out", str(eval_dir)]
    argv += ["--num-tasks", str(num_tasks)]
    return Job(name, [*argv, "--no-progress"], finished and not after, after, record, wanted)


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    jobs: list[Job] = []
    for seed in args.seeds:
        reference = args.reference / args.task / f"seed{seed}"
        if reference.exists():
            eval_dir = args.out / args.task / f"steps1-seed{seed}-eval"
            name = f"{args.task}/steps1-seed{seed}/evaluate"
            jobs.append(evaluate_job(name, reference, eval_dir, [], args.num_tasks))
    for variant in args.variants:
        spec = VARIANTS[args.task][variant]
        for seed in args.seeds:
            target = run_dir(args.out, args.task, variant, seed)
            name = f"{args.task}/{variant}-seed{seed}"
            overrides = [*spec.overrides, *args.set]
            train = train_job(name, spec.config, target, seed, args.iterations, "maml", overrides)
            jobs.append(train)
            after = [] if train.done else [name]
            job = evaluate_job(f"{name}/evaluate", target, target / "eval", after, args.num_tasks)
            if not train.done:  # its iteration is known only once trained
                job.info["iteration"] = args.iterations - 1
            jobs.append(job)
    return jobs


def evaluated(eval_dir: Path) -> dict[str, np.ndarray] | None:
    path = eval_dir / "adaptation_tasks.csv"
    if not (eval_dir / "multistep.json").exists() or not path.exists():
        return None
    return read_task_returns(path)


def step_cells(rows: Sequence[SummaryRow]) -> list[str]:
    return [format_cell(row) for row in rows]


def monotone(rows: Sequence[SummaryRow]) -> bool:
    means = [row.mean_return for row in rows[: MONOTONE_STEPS + 1]]
    return all(b > a for a, b in itertools.pairwise(means))


def task_table(out: Path, task: str, reference_runs: Path) -> str | None:
    """The per-step table of every evaluated variant of `task` (None if there is none);
    reference_runs/TASK/seedS are the 1-step runs (for their cost per iteration)."""
    reference = {
        int(p.name.removeprefix("steps1-seed").removesuffix("-eval")): e
        for p in sorted((out / task).glob("steps1-seed*-eval"))
        if (e := evaluated(p)) is not None
    }
    names = ["steps1"] + [v for v in VARIANTS[task] if any((out / task).glob(f"{v}-seed*"))]
    header = "| configuration | seeds | " + " | ".join(f"{s}" for s in range(EVAL_STEPS + 1))
    header += f" | improves 0→{MONOTONE_STEPS} | s / iteration |"
    lines = [f"### {task}", "", header, "|---" * (EVAL_STEPS + 5) + "|"]
    notes: list[str] = []
    curves: list[SummaryRow] = []
    for name in names:
        if name == "steps1":
            seeds, evals = sorted(reference), [reference[s] for s in sorted(reference)]
            dirs = [reference_runs / task / f"seed{s}" for s in seeds]
            costs = [run_cost(d) for d in dirs if (d / "metrics.jsonl").exists()]
            about = "one inner step (the shipped config)"
        else:
            dirs = [
                d
                for d in sorted((out / task).glob(f"{name}-seed*"))
                if d.is_dir() and evaluated(d / "eval") is not None
            ]
            seeds = [int(d.name.rsplit("seed", 1)[1]) for d in dirs]
            evals = [evaluated(d / "eval") for d in dirs]  # type: ignore[misc]
            costs = [run_cost(d) for d in dirs]
            about = VARIANTS[task][name].about
        if not evals:
            continue
        maml = [{"maml": e["maml"]} for e in evals]
        rows = pooled_rows(maml)
        label = f"{name} ({len(seeds)} seed{'s' * (len(seeds) > 1)})"
        curves += [dataclasses.replace(r, method=label) for r in rows]
        medians = median_rows(maml)
        per_iteration = [c.wall_s / c.iterations for c in costs]
        cost = f"{np.mean(per_iteration):.1f}" if per_iteration else ""
        seed_list = ",".join(map(str, seeds))
        lines.append(
            f"| {name}: mean | {seed_list} | "
            + " | ".join(step_cells(rows))
            + f" | {'yes' if monotone(rows) else 'no'} | {cost} |"
        )
        lines.append(
            f"| {name}: median | | "
            + " | ".join(f"{r.mean_return:.1f}" for r in medians)
            + " | | |"
        )
        if name != "steps1" and all(s in reference for s in seeds):
            paired = paired_rows(
                [{"maml": e["maml"], "steps1": reference[s]["maml"]}
                 for e, s in zip(evals, seeds, strict=True)],
                "maml",
                "steps1",
            )  # fmt: skip
            lines.append(
                f"| {name} − steps1 (paired) | | " + " | ".join(step_cells(paired)) + " | | |"
            )
        notes.append(f"- `{name}`: {about}.")
    if len(lines) == 4:
        return None
    figure = plot_adaptation(curves, out / task / "adaptation.png", f"{task}: mean over seeds")
    image = f"![{task}: adaptation after 0-{EVAL_STEPS} steps]({figure.relative_to(out)})"
    return "\n".join([*lines, "", *notes, "", image, ""])


def write_table(out: Path, reference_runs: Path) -> Path:
    sections = [s for task in VARIANTS if (s := task_table(out, task, reference_runs))]
    if not sections:
        raise ReproduceError(f"nothing has been evaluated under {out} yet")
    header = (
        "# Multi-step adaptation\n\nWritten by `python -m experiments.multistep`. Return after 0–5 "
        "inner steps on 40 held-out tasks per seed (each seed's tasks are those of the 1-step "
        "run of the same seed). Cells: mean ± half-width of the 95% Student-t interval over "
        "all (seed, task) pairs; medians below; `− steps1` is the paired difference on the "
        "same tasks. Step sizes: a run adapts with its trained step sizes for the steps it "
        "was trained with (its meta-learned ones, when it learns them), then half of "
        "`fast_lr` (fixed) or its last learned one. s / iteration: the mean training wall "
        "time per iteration (sampling and optimisation, 2-core Intel Xeon; the runs shared "
        "the cores with other work, so it is an upper bound).\n\n"
    )
    path = out / "MULTISTEP.md"
    path.write_text(header + "\n".join(sections))
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="navigation", choices=list(VARIANTS))
    parser.add_argument("--variants", nargs="+", default=[])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--num-tasks", type=int, default=40, help="held-out tasks per seed")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="further config overrides for new runs; resumed runs keep theirs",
    )
    parser.add_argument("--jobs", type=int, default=1, help="commands run at once")
    parser.add_argument("--stage", choices=("all", "table"), default="all")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "multistep")
    parser.add_argument(
        "--reference",
        type=Path,
        default=HERE / "results" / "reproduce-500",
        help="the reproduction whose 1-step runs (TASK/seedS) are the reference",
    )
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS[args.task]]
    if unknown:
        parser.error(f"unknown variants {unknown} of {args.task}; choose from "
                     f"{list(VARIANTS[args.task])}")  # fmt: skip
    if args.jobs < 1 or args.iterations < 1 or args.num_tasks < 2:
        parser.error("--jobs and --iterations must be >= 1, --num-tasks >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def work() -> Path:
        if args.stage == "all":
            run_jobs(plan_jobs(args), args.jobs, args.out / "logs")
        return write_table(args.out, args.reference)

    return run_script(work)


if __name__ == "__main__":
    sys.exit(main())
