"""Scores navigation policies with pytorch-maml-rl's own `test.py`, ours and theirs alike.

    python experiments/pytorch_maml_rl_test.py --checkout PATH --python VENV/bin/python \\
        POLICY [POLICY ...] [--seed 1] [--tasks 40] [--out DIR]

A POLICY is one of our run directories (its `checkpoint_latest.pt`), one of our checkpoint
files, or a pytorch-maml-rl `policy.th`. Ours are converted to its `NormalMLPPolicy` layout
(`mean.0/2/4` -> `layer1/layer2/mu`, `log_std` -> `sigma`; the same tanh 64x64 network and
state-independent log-std) and written to OUT/<name>/policy.th beside the `config.json` that its
test script reads (its `configs/maml/2d-navigation.yaml`, our navigation.yaml). Its `test.py`
then runs unchanged (`--num-batches 1 --meta-batch-size TASKS --seed SEED`, one worker, one
torch thread), with the one-line `torch.lstsq` fix of the side-by-side driver. The tasks are
drawn from its sampler's environment seeded with SEED, so every policy is scored on the same
goals and the per-task differences are paired. Prints, per policy, the mean return before and
after one step with a 95% Student-t interval over tasks, and each policy minus the first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import stats

from experiments.pytorch_maml_rl_side_by_side import PYTORCH_CONFIG
from maml_rl import checkpoint

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pytorch-maml-rl-test"

# Our GaussianMLPPolicy's parameter names -> pytorch-maml-rl's NormalMLPPolicy's (64x64 tanh).
RENAME = {
    "mean.0.weight": "layer1.weight",
    "mean.0.bias": "layer1.bias",
    "mean.2.weight": "layer2.weight",
    "mean.2.bias": "layer2.bias",
    "mean.4.weight": "mu.weight",
    "mean.4.bias": "mu.bias",
    "log_std": "sigma",
}

RUNNER = textwrap.dedent(
    '''
    """Runs pytorch-maml-rl's test.py unchanged, after the torch.lstsq fix (written by maml_rl's
    experiments/pytorch_maml_rl_test.py)."""

    import runpy
    import sys

    import torch


    def _lstsq(b, a):  # torch.lstsq(B, A) solved A X = B; since torch 2.0 it only raises
        return torch.linalg.lstsq(a, b).solution, None


    torch.lstsq = _lstsq
    torch.set_num_threads(1)
    sys.argv = sys.argv[1:]  # test.py's own path and arguments
    runpy.run_path(sys.argv[0], run_name="__main__")
    '''
)


def their_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch-maml-rl state dict from one of our checkpoints / run directories, or as is."""
    if path.is_dir():
        path = path / "checkpoint_latest.pt"
    if not path.is_file():
        raise SystemExit(f"{path}: no such checkpoint or policy file")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "sha256" in state:  # ours since format 2: checksummed
        state = checkpoint.load(path)
    if "theta" not in state:
        return state  # already theirs
    theta = state["theta"]
    if set(theta) != set(RENAME):
        raise SystemExit(f"{path}: not a 64x64 Gaussian navigation policy ({sorted(theta)})")
    return {RENAME[name]: value.detach().float().clone() for name, value in theta.items()}


def name_of(path: Path) -> str:
    """A folder name for a policy: its path below experiments/results/ (else its last two
    parts) joined by '-', without the file suffix."""
    resolved = path.resolve()
    parts = list(resolved.parts)
    if "results" in parts:
        parts = parts[len(parts) - parts[::-1].index("results") :]
    else:
        parts = parts[-2:]
    return "-".join(parts).replace(".pt", "").replace(".th", "")


def paired(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% Student-t half-width over tasks of [N] values."""
    n = len(values)
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return float(values.mean()), half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", type=Path)
    parser.add_argument("--checkout", type=Path, required=True, help="pytorch-maml-rl checkout")
    parser.add_argument("--python", required=True, help="python of its virtual environment")
    parser.add_argument("--seed", type=int, default=1, help="its test.py seed (default 1)")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not (args.checkout / "test.py").is_file():
        parser.error(f"{args.checkout} is not a pytorch-maml-rl checkout (no test.py)")

    args.out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(PYTORCH_CONFIG)
    (args.out / "config.json").write_text(json.dumps(config, indent=1))
    (args.out / "runner.py").write_text(RUNNER.lstrip())
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": str(args.checkout.resolve()),
    }
    results: dict[str, dict[str, np.ndarray]] = {}
    for policy in args.policies:
        name = name_of(policy)
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(their_state_dict(policy), folder / "policy.th")
        output = folder / f"test_seed{args.seed}.npz"
        command = [
            args.python, str(args.out / "runner.py"), str(args.checkout.resolve() / "test.py"),
            "--config", str(args.out / "config.json"), "--policy", str(folder / "policy.th"),
            "--output", str(output), "--num-batches", "1", "--meta-batch-size", str(args.tasks),
            "--seed", str(args.seed), "--num-workers", "1",
        ]  # fmt: skip
        subprocess.run(command, check=True, env=env, cwd=args.checkout, stdout=subprocess.DEVNULL)
        logs = np.load(output)
        # [tasks, K] episode returns -> per-task means [tasks]
        results[name] = {
            "before": logs["train_returns"].mean(axis=1),
            "after": logs["valid_returns"].mean(axis=1),
        }

    print(f"pytorch-maml-rl test.py, seed {args.seed}, {args.tasks} tasks, one step (fast-lr 0.1)")
    first = next(iter(results))
    for name, r in results.items():
        cells = []
        for key in ("before", "after"):
            mean, half = paired(r[key])
            cells.append(f"{key} {mean:7.2f} ± {half:.2f}")
        if name != first:
            mean, half = paired(r["after"] - results[first]["after"])
            cells.append(f"after − {first}: {mean:+.2f} ± {half:.2f}")
        print(f"{name}: " + ", ".join(cells))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
