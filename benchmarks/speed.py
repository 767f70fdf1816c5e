"""Meta-iteration wall time on 1 and 2 torch threads, alone and beside a second CPU-bound
process, for this code (and optionally an older checkout and pytorch-maml-rl), interleaved.

    python benchmarks/speed.py [--env navigation] [--modes gauss_newton:1.0,...]
        [--threads 1,2,auto] [--loads none,busy,twin] [--rounds 2] [--before PATH]
        [--pytorch-maml-rl PATH --pmrl-python VENV/bin/python]

Every measurement is one fresh process of benchmarks/meta_step.py (a warm-up iteration, then
--repeats timed ones), run with OMP_NUM_THREADS / MKL_NUM_THREADS set to the thread count. The
conditions are interleaved round by round (these machines drift), and the table gives the
median over rounds and repeats of each phase. Loads beside the measured process:
    none   nothing else running
    busy   one pure-Python busy loop (one core taken)
    twin   a second copy of the same measurement, with the same thread count (two training
           runs on one machine)
--before PATH runs PATH/benchmarks/meta_step.py with PATH's maml_rl (e.g. a `git worktree`
of an older commit) in the same rounds. --pytorch-maml-rl times pytorch-maml-rl's own
training loop on the navigation config (experiments/pytorch_maml_rl_side_by_side.py's driver:
one torch thread, as many sampler workers as the thread count; 3 iterations after a warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("sampling", "adaptation", "meta_grad", "cg", "line_search", "total")


def parse_rows(output: str) -> list[dict[str, float | str]]:
    """The timed (non-warm-up) rows of meta_step.py's table."""
    rows: list[dict[str, float | str]] = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 8 and ":" in fields[0] and "(warm-up)" not in line:
            try:
                values = [float(v) for v in fields[1:7]]
            except ValueError:
                continue
            rows.append({"mode": fields[0], **dict(zip(PHASES, values, strict=True))})
    return rows


def environment(threads: int | str, pythonpath: str | Path | None = None) -> dict[str, str]:
    """The measured process's environment: threads a count, or ``auto`` (maml_rl's default,
    threads.py: OMP_NUM_THREADS and MKL_NUM_THREADS unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads != "auto":
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def code_path(code: Path, scratch: Path) -> str:
    """PYTHONPATH that imports `code`'s own packages: its maml_rl, and its envs/ folder as
    ``maml_rl_envs`` (a link in `scratch`; the editable install of this checkout maps that name
    to this checkout's envs/, and a PYTHONPATH entry comes before that mapping)."""
    if not (code / "envs").is_dir():
        return str(code)
    shim = scratch / f"envs-of-{abs(hash(code))}"
    shim.mkdir(exist_ok=True)
    link = shim / "maml_rl_envs"
    if not link.exists():
        link.symlink_to(code / "envs", target_is_directory=True)
    return os.pathsep.join([str(code), str(shim)])


def start_load(
    load: str, twin: list[str], env: dict[str, str], cwd: str | None = None
) -> subprocess.Popen | None:
    """Start the load beside a measurement: nothing, a busy loop, or `twin` (the same
    measurement writing elsewhere)."""
    if load == "none":
        return None
    command = [sys.executable, "-c", "while True: pass"] if load == "busy" else twin
    return subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: its workers die with it
    )


def stop_load(process: subprocess.Popen | None) -> None:
    if process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# Runs a script after `import maml_rl`: checkouts before the process settings moved to
# maml_rl/runtime.py applied them on that import, and their meta_step.py imported torch first
# (too late for OMP_WAIT_POLICY); later ones import nothing heavy there and apply them in
# meta_step.py, so every checkout is measured with the settings its `maml-rl train` has.
AFTER_IMPORT = (
    "import maml_rl, runpy, sys; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def ours(code: Path, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-c",
        AFTER_IMPORT,
        str(code / "benchmarks" / "meta_step.py"),
        "--env",
        args.env,
        "--modes",
        args.modes,
        "--repeats",
        str(args.repeats + 1),
    ]


def pmrl_command(args: argparse.Namespace, out: Path, workers: int) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from experiments.pytorch_maml_rl_side_by_side import DRIVER

    driver = out / "driver.py"
    driver.write_text(DRIVER)
    config = Path(args.pytorch_maml_rl) / "configs" / "maml" / "2d-navigation.yaml"
    (out / "log").mkdir()
    return [args.pmrl_python, str(driver), str(config), str(out / "log"), "1", str(workers), "4"]


def pmrl_rows(out: Path) -> list[dict[str, float | str]]:
    lines = (out / "log" / "metrics.jsonl").read_text().splitlines()[1:]  # after a warm-up
    return [
        {"mode": "pytorch-maml-rl", "total": json.loads(line)["time/iteration_s"]} for line in lines
    ]


def print_table(
    args: argparse.Namespace, results: dict[tuple[str, str, str, str], list[dict]], rounds: int
) -> None:
    """Median of every phase per (code, mode, load, threads)."""
    print(f"{args.env}: median seconds per meta-iteration over {rounds} rounds x "
          f"{args.repeats} repeats; torch threads = OMP_NUM_THREADS; auto: unset (maml_rl's "
          "default, maml_rl/threads.py; torch's own default for older code)")  # fmt: skip
    header = ("code", "mode", "load", "threads", *PHASES, "total/sampling")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (name, mode, load, threads), rows in sorted(results.items()):
        medians = {
            phase: statistics.median(float(r[phase]) for r in rows)
            for phase in PHASES
            if phase in rows[0]
        }
        cells = [f"{medians[p]:.2f}" if p in medians else "" for p in PHASES]
        ratio = f"{medians['total'] / medians['sampling']:.2f}" if "sampling" in medians else ""
        print(f"| {name} | {mode} | {load} | {threads} | " + " | ".join(cells) + f" | {ratio} |")

    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="navigation")
    parser.add_argument("--modes", default="finite_difference:1.0,gauss_newton:1.0")
    parser.add_argument("--threads", default="1,2,auto")
    parser.add_argument("--loads", default="none,twin")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--pytorch-maml-rl", default=None)
    parser.add_argument("--pmrl-python", default=None)
    args = parser.parse_args()
    from maml_rl import machine  # torch loads here, not before the loads start

    print(f"# machine: {machine.describe()}", flush=True)

    codes: dict[str, Path] = {"this": ROOT}
    if args.before is not None:
        codes["before"] = args.before.resolve()
    results: dict[tuple[str, str, str, str], list[dict]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for load in args.loads.split(","):
                for threads in args.threads.split(","):
                    for name, code in codes.items():
                        env = environment(threads, code_path(code, Path(scratch)))
                        command = ours(code, args)
                        background = start_load(load, command, env)
                        done = subprocess.run(
                            command, env=env, capture_output=True, text=True, check=False
                        )
                        stop_load(background)
                        if done.returncode != 0:
                            sys.exit(f"{name} failed: {done.stderr.strip().splitlines()[-1:]}")
                        for row in parse_rows(done.stdout):
                            results[(name, str(row["mode"]), load, threads)].append(row)
                    if args.pytorch_maml_rl and args.env == "navigation" and threads != "auto":
                        out = Path(scratch) / f"pmrl-{round_index}-{load}-{threads}"
                        out.mkdir()
                        command = pmrl_command(args, out, int(threads))
                        (out / "twin").mkdir()
                        twin = pmrl_command(args, out / "twin", int(threads))
                        env = environment(threads, Path(args.pytorch_maml_rl))
                        background = start_load(load, twin, env, args.pytorch_maml_rl)
                        subprocess.run(
                            command, env=env, cwd=args.pytorch_maml_rl, capture_output=True,
                            check=True, start_new_session=True,
                        )  # fmt: skip
                        stop_load(background)
                        for row in pmrl_rows(out):
                            results[("pytorch-maml-rl", "its own", load, threads)].append(row)
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
            print_table(args, results, round_index + 1)  # so far: a crash loses nothing


if __name__ == "__main__":
    main()
