"""Train a finished run further, in chunks, until its training curve flattens; then evaluate
it on the same held-out tasks and against the same baselines as the run it extends.

    python -m experiments.extend experiments/results/reproduce-500/ant-dir/seed0 \\
        --out experiments/results/extended/ant-dir-seed0 --chunk 100 --min-gain 0.02

(from the repository's root). The source run is left as it is (its evaluation stays pooled
with the other seeds of its reproduction); OUT starts as a copy of its checkpoints and metrics
and is trained with `maml-rl train --resume` in chunks of C iterations. After each chunk, with
R the per-iteration post-update training returns [T], the relative gain of the last chunk

    g = (mean(R[T-C:]) − mean(R[T-2C:T-C])) / |mean(R[T-2C:T-C])|

decides: training stops once T > the source's iterations and g < --min-gain, or at
--max-iterations. OUT is then evaluated (`maml-rl evaluate`, the run's seed, so the source's
held-out tasks) against the source's baselines (SOURCE/baselines/{pretrained,oracle} where
they exist, and random), and OUT/EXTEND.md gives the chunks' returns and gains, where it
stopped and why, and the adaptation table beside the source's, paired on the same tasks.
Run the same command again to resume; finished steps are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.reproduce import (
    BASELINES,
    Job,
    ReproduceError,
    iterations_done,
    run_jobs,
    run_script,
    train_job,
)
from maml_rl import artifacts
from maml_rl.evaluation_files import read_task_returns
from maml_rl.logger import POST_UPDATE, read_metrics
from maml_rl.results import format_cell, paired_rows, pooled_rows
from maml_rl.train import LATEST

RECORD = "extend.json"  # OUT/extend.json: what OUT was copied from
EVAL_RECORD = "extend.json"  # OUT/eval/extend.json: which iteration was evaluated


def relative_gain(returns: Sequence[float], chunk: int) -> float:
    """g = (mean(R[T-C:]) − mean(R[T-2C:T-C])) / |mean(R[T-2C:T-C])| for the per-iteration
    training returns R [T] and chunk C; NaN when T < 2C (inf when the earlier mean is 0)."""
    values = np.asarray(returns, dtype=np.float64)
    if values.size < 2 * chunk:
        return math.nan
    last, previous = float(values[-chunk:].mean()), float(values[-2 * chunk : -chunk].mean())
    if previous == 0.0:
        return 0.0 if last == 0.0 else math.copysign(math.inf, last)
    return (last - previous) / abs(previous)


@dataclass(frozen=True)
class Decision:
    """Whether to train on: `target` iterations, or None with the `reason` to stop."""

    target: int | None
    reason: str


def decide(
    done: int, source_done: int, gain: float, chunk: int, min_gain: float, max_iterations: int
) -> Decision:
    """Train another chunk (up to `max_iterations`) unless `done` already exceeds the
    source's iterations and the last chunk gained less than `min_gain` (relative).

    Chunks end at source_done + k C. A chunk that was interrupted (a resumed run, `done`
    between two ends) is finished first: its gain is judged only at the end of a chunk.
    """
    if done >= max_iterations:
        return Decision(None, f"reached --max-iterations {max_iterations}")
    into_chunk = (done - source_done) % chunk
    if into_chunk:  # an interrupted chunk: finish it before judging
        return Decision(min(done + chunk - into_chunk, max_iterations), "")
    if done > source_done and gain < min_gain:
        return Decision(None, f"the last {chunk} iterations gained {gain:+.1%} < {min_gain:.1%}")
    return Decision(min(done + chunk, max_iterations), "")


def copy_run(source: Path, out: Path) -> int:
    """Copy `source`'s checkpoints, config, metrics and TensorBoard log into `out` (not its
    baselines or evaluations), once; the source's iterations."""
    record = out / RECORD
    if record.exists():
        return int(json.loads(record.read_text())["source_iterations"])
    if not (source / LATEST).exists():
        raise ReproduceError(f"{source} is not a run: it has no {LATEST}")
    if (out / LATEST).exists():
        raise ReproduceError(f"{out} holds a run that is not an extension (no {RECORD})")
    out.mkdir(parents=True, exist_ok=True)
    busy = f"{source} is being trained; copy it once that run has stopped"
    with artifacts.locked(source / artifacts.LOCK, busy):
        for path in source.iterdir():
            if path.name.startswith("."):  # its lock and temporary files
                continue
            if path.is_file():
                shutil.copy2(path, out / path.name)
            elif path.name == "tb":
                shutil.copytree(path, out / "tb", dirs_exist_ok=True)
        done = iterations_done(source)
    record.write_text(json.dumps({"source": str(source), "source_iterations": done}) + "\n")
    return done


def post_update_returns(run: Path) -> list[float]:
    return [float(row[POST_UPDATE]) for row in read_metrics(run)]


def train_until_flat(args: argparse.Namespace, source_done: int) -> str:
    """Train OUT chunk by chunk until `decide` stops; the reason it stopped."""
    while True:
        done = iterations_done(args.out)
        gain = relative_gain(post_update_returns(args.out), args.chunk)
        decision = decide(done, source_done, gain, args.chunk, args.min_gain, args.max_iterations)
        if decision.target is None:
            return decision.reason
        name = f"{args.out.name}/train-{decision.target}"
        run_jobs([train_job(name, "", args.out, 0, decision.target, "maml", [])], 1, args.logs)


def evaluate(args: argparse.Namespace) -> None:
    """Evaluate OUT at its last iteration against the source's baselines (once per iteration)."""
    record = args.out / "eval" / EVAL_RECORD
    wanted = {"iteration": iterations_done(args.out) - 1, "num_tasks": args.num_tasks}
    recorded = json.loads(record.read_text()) if record.exists() else {}
    found = [b for b in BASELINES if (args.source / "baselines" / b / LATEST).exists()]
    argv = ["evaluate", str(args.out), "--baselines", ",".join([*found, "random"])]
    argv += ["--num-tasks", str(args.num_tasks), "--no-progress"]
    for b in found:
        argv += [f"--{b}", str(args.source / "baselines" / b)]
    done = all(recorded.get(k) == v for k, v in wanted.items())
    job = Job(f"{args.out.name}/evaluate", argv, done, [], record, wanted)
    run_jobs([job], 1, args.logs)


def chunk_lines(returns: Sequence[float], chunk: int, source_done: int) -> list[str]:
    lines = [
        f"| iterations | post-update training return (mean) | gain over the previous {chunk} |",
        "|---|---|---|",
    ]
    for start in range(0, len(returns) - chunk + 1, chunk):
        window = returns[: start + chunk]
        gain = relative_gain(window, chunk)
        marker = " (source)" if start + chunk == source_done else ""
        gain_cell = "" if math.isnan(gain) else f"{gain:+.1%}"
        mean = float(np.mean(returns[start : start + chunk]))
        lines.append(f"| {start}–{start + chunk - 1}{marker} | {mean:.1f} | {gain_cell} |")
    return lines


def adaptation_lines(source: Path, out: Path) -> list[str]:
    """The source's and the extension's MAML rows, the extension's baselines, and the paired
    difference extension − source on the same tasks."""
    source_csv = source / "eval" / "adaptation_tasks.csv"
    extended = read_task_returns(out / "eval" / "adaptation_tasks.csv")
    steps = extended["maml"].shape[0]
    lines = ["| | " + " | ".join(f"{s} step{'s' * (s != 1)}" for s in range(steps)) + " |"]
    lines.append("|---" * (steps + 1) + "|")

    def add(label: str, rows: Sequence) -> None:
        lines.append(f"| {label} | " + " | ".join(format_cell(r) for r in rows) + " |")

    source_iterations = iterations_done(source)
    here = iterations_done(out)
    if source_csv.exists():
        original = read_task_returns(source_csv)
        add(f"maml at {source_iterations}", pooled_rows([{"maml": original["maml"]}]))
        add(f"maml at {here}", pooled_rows([{"maml": extended["maml"]}]))
        if original["maml"].shape == extended["maml"].shape:
            pair = {"maml": extended["maml"], "source": original["maml"]}
            add(f"maml at {here} − at {source_iterations} (paired)",
                paired_rows([pair], "maml", "source"))  # fmt: skip
    else:
        add(f"maml at {here}", pooled_rows([{"maml": extended["maml"]}]))
    for method in ("pretrained", "random", "oracle"):
        if method in extended:
            add(method, pooled_rows([{method: extended[method]}]))
    return lines


def write_summary(args: argparse.Namespace, source_done: int, reason: str) -> Path:
    returns = post_update_returns(args.out)
    lines = [
        f"# {args.source} trained further",
        "",
        f"Written by `python -m experiments.extend`. Source: `{args.source}` "
        f"({source_done} iterations); extended in `{args.out}` to {iterations_done(args.out)} "
        f"iterations in chunks of {args.chunk}. Stopped: {reason}.",
        "",
        *chunk_lines(returns, args.chunk, source_done),
        "",
    ]
    if (args.out / "eval" / EVAL_RECORD).exists():
        lines += [
            f"Return after 0, 1, ... steps on {args.num_tasks} held-out tasks (the run's seed, "
            "so the source's tasks), mean ± 95 % interval over tasks:",
            "",
            *adaptation_lines(args.source, args.out),
            "",
        ]
    path = args.out / "EXTEND.md"
    path.write_text("\n".join(lines))
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the finished run to extend (left unchanged)")
    parser.add_argument("--out", type=Path, required=True, help="the extension's run folder")
    parser.add_argument("--chunk", type=int, default=100, help="iterations per chunk (C)")
    parser.add_argument(
        "--min-gain",
        type=float,
        default=0.02,
        help="stop once the last chunk's relative gain is below this (default 0.02: 2 %%)",
    )
    parser.add_argument("--max-iterations", type=int, default=2000)
    parser.add_argument("--num-tasks", type=int, default=40, help="held-out tasks to evaluate")
    parser.add_argument("--stage", choices=("all", "table"), default="all")
    args = parser.parse_args(argv)
    if args.chunk < 1 or args.num_tasks < 2 or args.max_iterations < 1:
        parser.error("--chunk and --max-iterations must be >= 1, --num-tasks >= 2")
    if args.source.resolve() == args.out.resolve():
        parser.error("--out must differ from the source run, which stays as it is")
    args.logs = args.out / "logs"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def work() -> Path:
        source_done = copy_run(args.source, args.out)
        if args.stage == "all":
            reason = train_until_flat(args, source_done)
            evaluate(args)
        else:
            gain = relative_gain(post_update_returns(args.out), args.chunk)
            done = iterations_done(args.out)
            decision = decide(
                done, source_done, gain, args.chunk, args.min_gain, args.max_iterations
            )
            reason = decision.reason or "not finished: run the same command to go on"
        return write_summary(args, source_done, reason)

    return run_script(work)


if __name__ == "__main__":
    sys.exit(main())
