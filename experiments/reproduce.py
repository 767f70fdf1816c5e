"""Reproduce the paper's adaptation results (Finn et al. 2017, Fig. 5) with the shipped configs.

For each task and seed: train MAML (`maml-rl train`), train the pretrained and oracle baselines
(`maml-rl train --algo ...`), evaluate the adaptation curves on 40 held-out tasks
(`maml-rl evaluate`), then pool the seeds into one table per task. Every step is a `maml-rl`
command, printed as it starts, with its output in OUT/logs/. Run the same command again to
resume: finished steps are skipped and interrupted runs continue from their last checkpoint
(`--resume`), so a reproduction can span several sessions.

    python experiments/reproduce.py                      # DEFAULT_TASKS, seeds 0 1 2
    python experiments/reproduce.py --tasks navigation --seeds 0 --jobs 2
    python experiments/reproduce.py --stage table        # only rebuild the tables and figures

Layout: OUT/TASK/seedS (MAML run), OUT/TASK/seedS/baselines/{pretrained,oracle}, and
OUT/TASK/seedS/eval/adaptation_tasks.csv; OUT/TASK/adaptation.{csv,png} (seeds pooled),
OUT/TASK/training.png (the seeds' training curves) and OUT/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from maml_rl import checkpoint
from maml_rl.checkpoint import CheckpointError
from maml_rl.config import ConfigError
from maml_rl.evaluate import load_run, step_size_schedule
from maml_rl.evaluation_files import read_task_returns, write_csv
from maml_rl.plot import plot_adaptation, plot_training_bands
from maml_rl.results import (
    RunCost,
    markdown_table,
    median_rows,
    paired_rows,
    pooled_rows,
    run_cost,
)
from maml_rl.train import LATEST

HERE = Path(__file__).resolve().parent
# iterations of MAML and of each baseline per task: what fitted this repository's 2-core
# machine (docs/results/index.md); --iterations TASK=N[:B[:O]] or --full (the configs' 500) for more
PLAN = {
    "navigation": (100, 100),
    "halfcheetah-vel": (30, 30),
    "halfcheetah-dir": (40, 40),
    "ant-vel": (30, 20),
    "ant-dir": (30, 30),
    "ant-goal": (30, 30),
}
DEFAULT_TASKS = ("navigation", "halfcheetah-vel", "halfcheetah-dir", "ant-vel")
BASELINES = ("pretrained", "oracle")


class ReproduceError(Exception):
    """A step failed; its log says why."""


@dataclass
class Job:
    """One `maml-rl` command, run once the jobs it depends on have finished."""

    name: str
    argv: list[str]
    done: bool = False
    after: list[str] = field(default_factory=list)
    record: Path | None = None  # an evaluation's note of what it evaluated, and its wall time
    info: dict[str, int] = field(default_factory=dict)


def maml_rl_command() -> list[str]:
    found = shutil.which("maml-rl")
    return [found] if found else [sys.executable, "-m", "maml_rl.cli"]


def iterations_done(run_dir: Path) -> int:
    path = run_dir / LATEST
    return checkpoint.load(path)["iteration"] + 1 if path.exists() else 0


def train_job(
    name: str, task: str, run_dir: Path, seed: int, n: int, algo: str, overrides: Sequence[str]
) -> Job:
    """Train (or resume) the run in `run_dir` up to `n` iterations; `overrides` (KEY=VALUE)
    apply to a new run (a resumed run keeps its config)."""
    done = iterations_done(run_dir)
    if done:
        argv = ["train", "--resume", str(run_dir), "--set", f"num_batches={n}"]
    else:
        argv = ["train", task, "--out", str(run_dir), "--seed", str(seed), "--algo", algo]
        argv += ["--set", f"num_batches={n}", "--overwrite"]  # a run that died in iteration 0
        for item in overrides:
            argv += ["--set", item]
    return Job(name, [*argv, "--no-progress"], done=done >= n)


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    jobs: list[Job] = []
    for task in args.tasks:
        n, n_baselines = args.iterations[task]
        for seed in args.seeds:
            run_dir = args.out / task / f"seed{seed}"
            name = f"{task}/seed{seed}/maml"
            jobs.append(train_job(name, task, run_dir, seed, n, "maml", args.set))
            base_seed = seed if args.baseline_seeds == "all" else args.seeds[0]
            base_dirs = {
                b: args.out / task / f"seed{base_seed}" / "baselines" / b for b in BASELINES
            }
            if base_seed == seed:
                for b, b_dir in base_dirs.items():
                    name = f"{task}/seed{seed}/{b}"
                    jobs.append(train_job(name, task, b_dir, seed, n_baselines[b], b, args.set))
            eval_dir = run_dir / "eval"
            record = eval_dir / "reproduce.json"
            wanted = {
                "iteration": n - 1,
                "baseline_iterations": baseline_record(n_baselines),
                "seed": base_seed,
            }
            finished = record.exists() and all(
                json.loads(record.read_text()).get(k) == v for k, v in wanted.items()
            )
            argv = ["evaluate", str(run_dir), "--baselines", "pretrained,random,oracle"]
            argv += ["--num-tasks", str(args.num_tasks), "--no-progress"]
            for b, b_dir in base_dirs.items():
                argv += [f"--{b}", str(b_dir)]
            after = [f"{task}/seed{seed}/maml"] + [f"{task}/seed{base_seed}/{b}" for b in BASELINES]
            name = f"{task}/seed{seed}/evaluate"
            jobs.append(Job(name, argv, finished, after, record, wanted))
    return jobs


def baseline_record(n_baselines: dict[str, int]) -> int | dict[str, int]:
    """What an evaluation record notes of the baselines' iterations: one count when they
    share it, else the count of each."""
    counts = set(n_baselines.values())
    return counts.pop() if len(counts) == 1 else dict(n_baselines)


def parse_iterations(item: str, plan: dict[str, tuple[int, dict[str, int]]]) -> None:
    """Apply one TASK=N[:B[:O]] to `plan`: MAML N, pretrained B (default N) and oracle O
    (default B) iterations; ValueError if it is malformed."""
    task, _, counts = item.partition("=")
    fields = counts.split(":")
    if task not in plan or len(fields) > 3 or not all(f.isdigit() and int(f) > 0 for f in fields):
        raise ValueError(item)
    n = int(fields[0])
    b = int(fields[1]) if len(fields) > 1 else n
    o = int(fields[2]) if len(fields) > 2 else b
    plan[task] = (n, {"pretrained": b, "oracle": o})


def run_job(job: Job, command: list[str], logs: Path, env: dict[str, str]) -> float:
    """Run one job with its output in logs/NAME.log; its wall time in seconds."""
    log = logs / f"{job.name.replace('/', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command + job.argv)}\n")
        handle.flush()
        code = subprocess.call(command + job.argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise ReproduceError(f"{job.name} failed (exit {code}); see {log}")
    return time.perf_counter() - start


def run_jobs(jobs: Sequence[Job], num_jobs: int, logs: Path) -> None:
    """Run the unfinished jobs, `num_jobs` at a time, each after the jobs it depends on."""
    command = maml_rl_command()
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // num_jobs))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)  # J processes share the cores without oversubscribing
    pending = {job.name: job for job in jobs if not job.done}
    finished = {job.name for job in jobs if job.done}
    running: dict[Future[float], Job] = {}
    with ThreadPoolExecutor(num_jobs) as pool:
        while pending or running:
            ready = [j for j in pending.values() if all(a in finished for a in j.after)]
            for job in ready[: num_jobs - len(running)]:
                del pending[job.name]
                print(f"start  {job.name}: maml-rl {' '.join(job.argv)}", flush=True)
                running[pool.submit(run_job, job, command, logs, env)] = job
            if not running:
                raise ReproduceError(f"jobs wait for missing steps: {sorted(pending)}")
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in complete:
                job = running.pop(future)
                wall = future.result()
                finished.add(job.name)
                print(f"done   {job.name} in {wall / 60:.1f} min", flush=True)
                if job.record is not None:
                    record_evaluation(job, wall)


def record_evaluation(job: Job, wall: float) -> None:
    """Note what an evaluation evaluated, so a rerun knows it is done."""
    assert job.record is not None
    job.record.write_text(json.dumps({**job.info, "wall_s": round(wall, 1)}, indent=1) + "\n")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def cost_cells(cost: RunCost) -> str:
    gain = "" if math.isnan(cost.late_gain) else f"{cost.late_gain:+.1f}"
    return f"{cost.iterations} | {cost.env_steps / 1e6:.1f} M | {duration(cost.wall_s)} | {gain}"


def task_section(out: Path, task: str) -> str | None:
    """The pooled table, figure and costs of one task (None if no seed was evaluated)."""
    seeds = sorted(
        p for p in (out / task).glob("seed*") if (p / "eval" / "reproduce.json").exists()
    )
    if not seeds:
        return None
    evaluations = [read_task_returns(s / "eval" / "adaptation_tasks.csv") for s in seeds]
    rows = pooled_rows(evaluations)
    write_csv(rows, out / task / "adaptation.csv")
    num_tasks = rows[0].num_tasks
    title = f"{task}: {len(seeds)} seed{'s' * (len(seeds) > 1)}, {num_tasks} held-out tasks"
    plot_adaptation(rows, out / task / "adaptation.png", title)
    cfg = load_run(seeds[0]).cfg
    schedule = step_size_schedule(cfg.fast_lr, rows[-1].step)
    lines = [
        f"### {task}",
        "",
        f"Config `experiments/{task}.yaml`; {len(seeds)} seed{'s' * (len(seeds) > 1)} x "
        f"{num_tasks // len(seeds)} "
        f"held-out tasks; K = {cfg.fast_batch_size} trajectories per step, "
        f"H = {cfg.env_kwargs.get('max_episode_steps', 'default')}; step sizes "
        + ", ".join(f"{a:g}" for a in schedule)
        + ".",
        "",
        markdown_table(task, rows + median_rows(evaluations) + paired_rows(evaluations)),
        "",
    ]
    lines += [
        "| run | iterations | env steps | wall time | training return, last 10% − previous 10% |",
        "|---|---|---|---|---|",
    ]
    baseline_seeds: list[int] = []
    for seed_dir in seeds:
        cost = run_cost(seed_dir)
        info = json.loads((seed_dir / "eval" / "reproduce.json").read_text())
        lines.append(f"| MAML, {seed_dir.name} | {cost_cells(cost)} |")
        if info["seed"] not in baseline_seeds:
            baseline_seeds.append(info["seed"])
    for seed in baseline_seeds:
        for b in BASELINES:
            cost = run_cost(out / task / f"seed{seed}" / "baselines" / b)
            lines.append(f"| {b}, seed{seed} | {cost_cells(cost)} |")
    groups: dict[str, list[Path]] = {"maml": list(seeds)}
    for b in BASELINES:
        groups[b] = [out / task / f"seed{seed}" / "baselines" / b for seed in baseline_seeds]
    plot_training_bands(
        groups,
        out / task / "training.png",
        f"{task}: training curves, mean over runs (MAML: {len(seeds)} seed"
        f"{'s' * (len(seeds) > 1)})",
    )
    walls = [json.loads((d / "eval" / "reproduce.json").read_text())["wall_s"] for d in seeds]
    low, high = duration(min(walls)), duration(max(walls))
    spread = low if low == high else f"{low} to {high}"
    label = "evaluation" if len(walls) == 1 else "evaluation, per seed"
    lines.append(f"| {label} | | | {spread} | |")
    lines.append("")
    return "\n".join(lines)


def write_tables(out: Path) -> Path:
    """OUT/RESULTS.md with a section per task of PLAN that has an evaluated seed."""
    sections = [s for task in PLAN if (s := task_section(out, task)) is not None]
    if not sections:
        raise ReproduceError(f"nothing has been evaluated under {out} yet")
    header = (
        "# Reproduction results\n\nWritten by `experiments/reproduce.py`. Cells: mean return "
        "± half-width of the 95% Student-t interval over all held-out tasks of all seeds. "
        "`maml`, `pretrained` (TRPO on the task distribution) and `random` (a fresh policy) "
        "are adapted by the same gradient steps; `oracle` sees the task and is not adapted; "
        "`maml − pretrained` is the paired difference on the same tasks and seeds. "
        "Paper values: approximate, read off Fig. 5 (H = 200, rllab physics).\n\n"
    )
    path = out / "RESULTS.md"
    path.write_text(header + "\n".join(sections))
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=list(PLAN))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--iterations",
        nargs="+",
        default=[],
        metavar="TASK=N[:B[:O]]",
        help="MAML iterations N for a task, and the baselines' B (default N); O, when given, "
        "is the oracle's (default B)",
    )
    parser.add_argument("--full", action="store_true", help="500 iterations (the configs)")
    parser.add_argument(
        "--baseline-seeds",
        choices=("all", "first"),
        default="first",
        help="train the baselines once (first seed, default) and share them, or for every seed",
    )
    parser.add_argument("--num-tasks", type=int, default=40, help="held-out tasks per seed")
    parser.add_argument("--jobs", type=int, default=1, help="commands run at once")
    parser.add_argument("--stage", choices=("all", "table"), default="all")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for new runs (e.g. device=cuda); resumed runs keep theirs",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "reproduce")
    args = parser.parse_args(argv)
    plan: dict[str, tuple[int, dict[str, int]]] = {}
    for task in PLAN:
        n, b = (500, 500) if args.full else PLAN[task]
        plan[task] = (n, dict.fromkeys(BASELINES, b))
    for item in args.iterations:
        try:
            parse_iterations(item, plan)
        except ValueError:
            parser.error(
                f"--iterations expects TASK=N, TASK=N:B or TASK=N:B:O (positive counts) with a "
                f"task of {list(PLAN)}, not {item!r}"
            )
    if args.jobs < 1 or args.num_tasks < 2:
        parser.error("--jobs must be >= 1 and --num-tasks >= 2")
    args.iterations = plan
    return args


def run_script(work: Callable[[], Path]) -> int:
    """The exit status of an experiment script whose `work` runs its steps and returns the
    table it wrote: 0 (and "wrote PATH"), 1 with a one-line error when a step failed or a run
    or file is wrong, 130 when interrupted (the same command resumes)."""
    try:
        print(f"wrote {work()}")
    except (ReproduceError, CheckpointError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def work() -> Path:
        if args.stage == "all":
            run_jobs(plan_jobs(args), args.jobs, args.out / "logs")
        return write_tables(args.out)

    return run_script(work)


if __name__ == "__main__":
    sys.exit(main())
