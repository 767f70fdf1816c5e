"""pytorch-maml-rl and maml_rl on the same navigation config, side by side, with both curves.

    python experiments/pytorch_maml_rl_side_by_side.py --checkout PATH --python VENV/bin/python
        [--iterations 500] [--seed 1] [--workers 1] [--ours DIR] [--out DIR] [--window 25]

PATH is a checkout of tristandeleu/pytorch-maml-rl (tested at 21d4ba1), VENV a virtual
environment with its requirements on a current torch: ``pip install torch gym==0.17.3
"numpy<2" pyyaml tqdm``. Nothing in the checkout is edited: a driver (written to OUT/driver.py)
runs its own `train.py` loop unchanged (same sampler, baseline, MAMLTRPO.step and config) and
only adds what it lacks: one JSON line per iteration (pre- and post-update returns of the
iteration's tasks, as our `returns/pre_update` and `returns/post_update`) and the one-line fix
of `torch.lstsq`, removed from torch, by `torch.linalg.lstsq` (the same solve).

Our run trains (or resumes) with `maml-rl train navigation` into --ours (default OUT/maml_rl).
Running the script again resumes both: ours from its checkpoint, theirs from
OUT/pytorch-maml-rl/policy.th after the iterations its metrics.jsonl holds (its sampler and torch
then seeded with seed + iterations done; see the driver). The two trainings run one after the
other, each on one torch thread (`--theirs-only` trains pytorch-maml-rl alone). The script then
prints the post-update return of both over windows of `--window` iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pytorch-maml-rl-side-by-side"

DRIVER = textwrap.dedent(
    '''
    """Runs pytorch-maml-rl's train.py loop and logs per-iteration returns (written by
    maml_rl's experiments/pytorch_maml_rl_side_by_side.py; the checkout is not modified)."""
    import json, os, sys, time

    import torch
    import yaml

    def _lstsq(b, a):  # torch.lstsq(B, A) solved A X = B; since torch 2.0 it only raises
        return torch.linalg.lstsq(a, b).solution, None

    torch.lstsq = _lstsq  # the baseline's only use of it (forked sampler workers inherit it)

    import gym
    import maml_rl.envs  # noqa: F401  (registers the environments)
    from maml_rl.baseline import LinearFeatureBaseline
    from maml_rl.metalearners import MAMLTRPO
    from maml_rl.samplers import MultiTaskSampler
    from maml_rl.utils.helpers import get_input_size, get_policy_for_env
    from maml_rl.utils.reinforcement_learning import get_returns

    config_path, out, seed, workers, iterations = sys.argv[1:6]
    seed, workers, iterations = int(seed), int(workers), int(iterations)
    config = yaml.safe_load(open(config_path))
    # Resume: the policy is train.py's whole state (TRPO keeps none; the baseline is refit per
    # task), so continuing from policy.th after N logged iterations is its own loop restarted
    # with the sampler and torch seeded by seed + N (not bit-identical to an uninterrupted run).
    try:
        start = sum(1 for line in open(out + "/metrics.jsonl") if line.strip())
    except FileNotFoundError:
        start = 0
    seed += start
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    env = gym.make(config["env-name"], **config.get("env-kwargs", {}))
    env.close()
    policy = get_policy_for_env(
        env, hidden_sizes=config["hidden-sizes"], nonlinearity=config["nonlinearity"]
    )
    if start:
        policy.load_state_dict(torch.load(out + "/policy.th"))
    policy.share_memory()
    baseline = LinearFeatureBaseline(get_input_size(env))
    sampler = MultiTaskSampler(
        config["env-name"], env_kwargs=config.get("env-kwargs", {}),
        batch_size=config["fast-batch-size"], policy=policy, baseline=baseline, env=env,
        seed=seed, num_workers=workers,
    )
    metalearner = MAMLTRPO(policy, fast_lr=config["fast-lr"], first_order=config["first-order"])
    with open(out + "/metrics.jsonl", "a") as log:
        for iteration in range(start, iterations):
            start = time.perf_counter()
            tasks = sampler.sample_tasks(num_tasks=config["meta-batch-size"])
            futures = sampler.sample_async(
                tasks, num_steps=config["num-steps"], fast_lr=config["fast-lr"],
                gamma=config["gamma"], gae_lambda=config["gae-lambda"], device="cpu",
            )
            logs = metalearner.step(
                *futures, max_kl=config["max-kl"], cg_iters=config["cg-iters"],
                cg_damping=config["cg-damping"], ls_max_steps=config["ls-max-steps"],
                ls_backtrack_ratio=config["ls-backtrack-ratio"],
            )
            train_episodes, valid_episodes = sampler.sample_wait(futures)
            row = {
                "iteration": iteration,
                "returns/pre_update": float(get_returns(train_episodes[0]).mean()),
                "returns/post_update": float(get_returns(valid_episodes).mean()),
                "meta/accepted": float("loss_after" in logs),
                "log_std": policy.sigma.detach().tolist(),
                "time/iteration_s": time.perf_counter() - start,
            }
            torch.save(policy.state_dict(), out + "/policy.tmp")
            os.replace(out + "/policy.tmp", out + "/policy.th")  # before the row that counts it
            log.write(json.dumps(row) + "\\n")
            log.flush()
    sampler.close()
    '''
)

PYTORCH_CONFIG = textwrap.dedent(
    """\
    # pytorch-maml-rl's configs/maml/2d-navigation.yaml, key for key (our navigation.yaml is the
    # same settings under our key names)
    env-name: "2DNavigation-v0"
    env-kwargs: {low: -0.5, high: 0.5}
    gamma: 0.99
    gae-lambda: 1.0
    first-order: false
    hidden-sizes: [64, 64]
    nonlinearity: "tanh"
    fast-batch-size: 20
    num-steps: 1
    fast-lr: 0.1
    num-batches: 500
    meta-batch-size: 20
    max-kl: 1.0e-2
    cg-iters: 10
    cg-damping: 1.0e-5
    ls-max-steps: 15
    ls-backtrack-ratio: 0.8
    """
)


def post_update(path: Path) -> np.ndarray:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return np.array([row["returns/post_update"] for row in rows])


def window_means(values: np.ndarray, width: int) -> list[float]:
    return [float(values[s : s + width].mean()) for s in range(0, len(values) - width + 1, width)]


def curves_table(curves: dict[str, np.ndarray], width: int) -> str:
    means = {name: window_means(values, width) for name, values in curves.items()}
    count = max((len(m) for m in means.values()), default=0)
    lines = [
        "| run | " + " | ".join(str(w * width) for w in range(count)) + " |",
        "|" + "---|" * (count + 1),
    ]
    for name, cells in means.items():
        padded = [f"{c:.1f}" for c in cells] + [""] * (count - len(cells))
        lines.append(f"| {name} | " + " | ".join(padded) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, help="pytorch-maml-rl checkout")
    parser.add_argument("--python", default=None, help="python of its virtual environment")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="its sampler processes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--ours", type=Path, default=None, help="our run directory")
    parser.add_argument("--window", type=int, default=25)
    parser.add_argument("--table-only", action="store_true", help="print the curves only")
    parser.add_argument("--theirs-only", action="store_true", help="train pytorch-maml-rl only")
    args = parser.parse_args()

    theirs_dir, ours_dir = args.out / "pytorch-maml-rl", args.ours or args.out / "maml_rl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if not args.table_only:
        if args.checkout is None or args.python is None:
            parser.error("--checkout and --python are needed to train (or pass --table-only)")
        if not (args.checkout / "maml_rl" / "metalearners" / "maml_trpo.py").is_file():
            parser.error(f"{args.checkout} is not a pytorch-maml-rl checkout")
        theirs_dir.mkdir(parents=True, exist_ok=True)
        (theirs_dir / "driver.py").write_text(DRIVER)
        (theirs_dir / "2d-navigation.yaml").write_text(PYTORCH_CONFIG)
        command = [
            args.python,
            str(theirs_dir / "driver.py"),
            str(theirs_dir / "2d-navigation.yaml"),
            str(theirs_dir),
            str(args.seed),
            str(args.workers),
            str(args.iterations),
        ]
        their_env = {**env, "PYTHONPATH": str(args.checkout.resolve())}
        subprocess.run(command, check=True, env=their_env, cwd=args.checkout)
    if not args.table_only and not args.theirs_only:
        ours = ["maml-rl", "train"]
        if (ours_dir / "checkpoint_latest.pt").exists():
            ours += ["--resume", str(ours_dir)]
        else:
            ours += ["navigation", "--out", str(ours_dir), "--seed", str(args.seed)]
        ours += ["--no-progress", "--set", f"num_batches={args.iterations}"]
        subprocess.run(ours, check=True, env=env)

    curves = {}
    for name, folder in (("pytorch-maml-rl", theirs_dir), ("maml_rl", ours_dir)):
        if (folder / "metrics.jsonl").is_file():
            curves[f"{name} seed {args.seed}"] = post_update(folder / "metrics.jsonl")
    if not curves:
        sys.exit(f"no metrics.jsonl in {theirs_dir} or {ours_dir}")
    print(f"post-update return, mean over windows of {args.window} iterations")
    print(curves_table(curves, args.window))


if __name__ == "__main__":
    main()
