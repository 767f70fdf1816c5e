"""Navigation: the shipped config with each convention where maml_rl and pytorch-maml-rl differ
switched on alone, same seeds, and the windowed table of post-update training returns.

    python experiments/navigation_arms.py train [--arms steps,episodes_loss] [--seeds 0,1]
        [--iterations 200] [--jobs 2]
    python experiments/navigation_arms.py table [--window 25]

Each arm x seed is a normal run directory under experiments/results/navigation-arms/ARM/seedS,
trained by `maml-rl train` (one process per run, one torch thread each, `nice`), checkpointed
every iteration and resumed when the script is run again. `table` prints the mean post-update
return over windows of iterations 0-24, 25-49, ... for every run and the mean over its seeds.

Arms (config overrides on top of experiments/navigation.yaml):
    steps           the shipped conventions (every valid step of a task weighs the same,
                    pooled advantage statistics, KL(old || new))
    episodes_loss   loss_weighting: episodes (inner loss, surrogate and KL as means of
                    per-episode means, pytorch-maml-rl's weighted_mean)
    episodes_adv    advantage_statistics: episodes (pytorch-maml-rl's weighted_normalize)
    kl_new_old      kl_direction: new_old (pytorch-maml-rl's kl_divergence(pi, old_pi))
    pytorch         all three together (pytorch-maml-rl's conventions)
The baseline's observation clipping (rllab clips to +-10, pytorch-maml-rl does not) is not an
arm: navigation positions stay far inside +-10 (at most 0.1 per step from the origin and
episodes are 100 steps, but no policy here goes further than about 2), so it changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent / "results" / "navigation-arms"
OURS = {"loss_weighting": "steps", "advantage_statistics": "steps", "kl_direction": "old_new"}
"""maml_rl's original conventions, spelled out so an arm means the same whatever the defaults."""
ARMS: dict[str, dict[str, str]] = {
    "steps": OURS,
    "episodes_loss": {**OURS, "loss_weighting": "episodes"},
    "episodes_adv": {**OURS, "advantage_statistics": "episodes"},
    "kl_new_old": {**OURS, "kl_direction": "new_old"},
    "pytorch": {
        "loss_weighting": "episodes",
        "advantage_statistics": "episodes",
        "kl_direction": "new_old",
    },
}


REFERENCE_RUNS = {("steps", 0): ROOT.parent / "navigation" / "maml"}
"""Runs made before this script, with exactly an arm's config and seed: the shipped navigation
run (500 iterations, seed 0) is the `steps` arm's seed 0 and is not trained again."""


def run_dir(arm: str, seed: int) -> Path:
    return REFERENCE_RUNS.get((arm, seed), ROOT / arm / f"seed{seed}")


def train_one(
    arm: str, seed: int, iterations: int, config: str, extra: Sequence[str] = ()
) -> tuple[str, int, int]:
    """Train (or resume) one arm x seed in its own process; returns (arm, seed, exit status).

    extra: further KEY=VALUE settings (on resume only those `train --resume` accepts)."""
    out = run_dir(arm, seed)
    if (arm, seed) in REFERENCE_RUNS:
        return arm, seed, 0
    sets = [f"{k}={v}" for k, v in {**ARMS[arm], "num_batches": iterations}.items()]
    sets += list(extra)
    if (out / "checkpoint_latest.pt").exists():
        command = ["maml-rl", "train", "--resume", str(out)]
    else:
        command = ["maml-rl", "train", config, "--out", str(out), "--seed", str(seed)]
    command = ["nice", "-n", "19", *command, "--no-progress"]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.log").open("a") as log:
        status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return arm, seed, status


def post_update_returns(path: Path) -> np.ndarray:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return np.array([row["returns/post_update"] for row in rows])


def windows(values: np.ndarray, width: int, count: int) -> list[float | None]:
    out: list[float | None] = []
    for w in range(count):
        chunk = values[w * width : (w + 1) * width]
        out.append(float(chunk.mean()) if len(chunk) == width else None)
    return out


def table(width: int) -> str:
    runs = {
        (arm, int(p.parent.name[4:])): post_update_returns(p)
        for arm in ARMS
        for p in sorted((ROOT / arm).glob("seed*/metrics.jsonl"))
    }
    for key, folder in REFERENCE_RUNS.items():
        if (folder / "metrics.jsonl").is_file():
            runs[key] = post_update_returns(folder / "metrics.jsonl")
    if not runs:
        return f"no runs under {ROOT}"
    count = max(len(v) for v in runs.values()) // width
    header = "| run | iterations | " + " | ".join(str(w * width) for w in range(count)) + " |"
    lines = [header, "|" + "---|" * (count + 2)]

    def fmt(cells: list[float | None]) -> str:
        return " | ".join("" if c is None else f"{c:.1f}" for c in cells)

    for arm in ARMS:
        seeds = sorted(s for a, s in runs if a == arm)
        for seed in seeds:
            values = runs[arm, seed]
            lines.append(
                f"| {arm} seed {seed} | {len(values)} | {fmt(windows(values, width, count))} |"
            )
        if len(seeds) > 1:
            per_seed = [windows(runs[arm, s], width, count) for s in seeds]
            mean = [
                None
                if any(c[w] is None for c in per_seed)
                else float(np.mean([c[w] for c in per_seed]))
                for w in range(count)
            ]
            lines.append(f"| **{arm} mean of {len(seeds)}** | | {fmt(mean)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) the arms")
    train.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names")
    train.add_argument("--seeds", default="0,1")
    train.add_argument("--iterations", type=int, default=200)
    train.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    train.add_argument("--config", default="navigation")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a further setting for every run, e.g. hvp=gauss_newton (repeatable)",
    )  # fmt: skip
    show = sub.add_parser("table", help="print the windowed table")
    show.add_argument("--window", type=int, default=25)
    args = parser.parse_args()

    if args.command == "table":
        sys.stdout.write(table(args.window) + "\n")
        return
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(arm, seed) for seed in seeds for arm in arms]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(train_one, a, s, args.iterations, args.config, args.set) for a, s in jobs
        ]
        for future in futures:
            arm, seed, status = future.result()
            sys.stdout.write(f"{arm} seed {seed}: exit {status}\n")
            sys.stdout.flush()
    sys.stdout.write(table(25) + "\n")


if __name__ == "__main__":
    main()
