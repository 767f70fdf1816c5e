"""The memory estimate (maml_rl/memory.py) against the measured peak, per config.

For each config: one training run of `--iterations` meta-iterations (`maml-rl train`), then an
evaluation of it (`maml-rl evaluate --num-tasks N --num-steps S`), each in its own process,
whose resident memory and that of its descendants (sampler workers) is read from /proc every
`--interval` seconds (`memory.process_tree_bytes`). Printed per run: the estimate that the
up-front check makes (`build.run_sizes`, `memory.estimate_bytes`), the peak of the main
process and of the process tree (GiB), how many interpreters the tree had at its peak (the
main process and its sampler workers), the ratio to the estimate of what the tree held
above that many bare interpreters (each measured first: torch, Gymnasium, MuJoCo and maml_rl
imported), and the command's wall time in seconds. Linux only (/proc).

    python benchmarks/memory.py navigation halfcheetah-vel ant-vel
    python benchmarks/memory.py metaworld-ml1-push --set meta_batch_size=5 --num-tasks 5

The estimate is an order of magnitude, not a bound: the docstring of maml_rl/memory.py says
what it counts. A ratio near 1 means it counts what the run holds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from maml_rl.runtime import configure_process

configure_process()  # as `maml-rl train` does (maml_rl/runtime.py): before torch is imported

from maml_rl import machine
from maml_rl.build import run_sizes
from maml_rl.config import load, parse_override
from maml_rl.configs import find_config
from maml_rl.memory import GIB, TreeMemory, estimate_bytes, process_tree_bytes

INTERPRETER = (
    "import torch, gymnasium, mujoco, maml_rl.api, maml_rl.train, maml_rl.evaluate; "
    "import time; time.sleep(2)"
)
"""What one bare interpreter of a run imports before it allocates anything of its own."""


def peak(command: list[str], interval: float) -> tuple[TreeMemory, int]:
    """Run `command` to its end, sampling its process tree's resident memory every `interval`
    seconds: the sample where the tree held the most, and the main process's own peak
    (SystemExit with the command's output if it fails)."""
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    top, own = TreeMemory(0), 0
    while process.poll() is None:
        measured = process_tree_bytes(process.pid)
        if measured is not None:
            top = max(top, measured, key=lambda m: m.tree)
            own = max(own, measured.own)
        time.sleep(interval)
    if process.returncode != 0:
        log.seek(0)
        raise SystemExit(f"{' '.join(command)} failed:\n{log.read()[-2000:]}")
    return top, own


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="shipped config names or YAML paths")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides for every config (as `maml-rl train --set`)")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--num-tasks", type=int, default=40, help="evaluation's tasks")
    parser.add_argument("--num-steps", type=int, default=3, help="evaluation's steps")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    args = parser.parse_args()
    print(f"# machine: {machine.describe()}", flush=True)
    maml_rl = [sys.executable, "-m", "maml_rl.cli"]
    bare = peak([sys.executable, "-c", INTERPRETER], args.interval)[1]
    print(f"one interpreter with torch, Gymnasium, MuJoCo and maml_rl: {gib(bare)} GiB")
    header = ("config", "kind", "sizes", "estimate", "main", "tree", "interpreters", "ratio",
              "seconds")  # fmt: skip
    print(" | ".join(header))
    for name in args.configs:
        overrides = dict(parse_override(item) for item in args.set)
        cfg = load(find_config(name), overrides=overrides)
        with tempfile.TemporaryDirectory() as folder:
            run = Path(folder) / "run"
            sets = ["--set", f"num_batches={args.iterations}", *args.set]
            train = [*maml_rl, "train", name, "--out", str(run), "--no-progress", *sets]
            evaluate = [*maml_rl, "evaluate", str(run), "--num-tasks", str(args.num_tasks),
                        "--num-steps", str(args.num_steps), "--no-progress"]  # fmt: skip
            for kind, command, sizes in (
                ("training", train, run_sizes(cfg)),
                ("evaluation", evaluate,
                 run_sizes(cfg, args.num_tasks, args.num_steps, kind="evaluation")),
            ):  # fmt: skip
                estimate = estimate_bytes(sizes)
                start = time.perf_counter()
                top, own = peak(command, args.interval)
                seconds = time.perf_counter() - start
                # interpreters: the main process and each worker that imported torch (a helper
                # process of a few MiB is not one)
                workers = sum(r > bare / 2 for r in top.descendants)
                above = top.tree - (1 + workers) * bare
                row = (
                    name, kind, str(sizes), gib(estimate), gib(own), gib(top.tree),
                    str(1 + workers), f"{above / estimate:.2f}", f"{seconds:.0f}",
                )  # fmt: skip
                print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
