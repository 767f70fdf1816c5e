"""The Python API in one script: load a shipped config, train with a callback that logs and
stops early, resume to the end, evaluate on held-out tasks, read the per-task returns.

    python examples/python_api.py [--out runs/python_api] [--tiny]

--tiny runs it in seconds at toy sizes (2 tasks x 2 trajectories, a few iterations): what CI
does (tests/test_example_python_api.py). Without it, 2D navigation trains for 100 iterations
(a few minutes on two cores) and the callback stops it once the post-update return reaches
-20, then the run resumes to its end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import maml_rl

TINY = dict(
    num_batches=4,
    meta_batch_size=2,
    fast_batch_size=2,
    hidden_sizes=[16],
    cg_iters=2,
    env_kwargs={"max_episode_steps": 10},
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/python_api", help="run directory (replaced)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for CI")
    args = parser.parse_args()
    run_dir = Path(args.out)

    # --- a shipped config by name, with overrides ---
    overrides = TINY if args.tiny else {"num_batches": 100}
    cfg = maml_rl.load_config("navigation", **overrides)

    # --- train with a callback: log each iteration, stop early (the run stays resumable) ---
    def log_and_stop(info: maml_rl.IterationInfo) -> bool:
        pre, post = info.metrics["returns/pre_update"], info.metrics["returns/post_update"]
        size = sum(p.numel() for p in info.theta.values())
        print(f"callback, iteration {info.iteration + 1}: {pre:.2f} -> {post:.2f} ({size} weights)")
        good_enough = info.iteration >= 1 if args.tiny else post >= -20.0
        return not good_enough  # False: stop after this iteration

    rows = maml_rl.train(cfg, run_dir, callbacks=[log_and_stop], overwrite=True, progress=False)
    print(f"stopped after {len(rows)} iterations; resuming to {cfg.num_batches}")
    maml_rl.train(None, run_dir, resume=True, progress=False)

    # --- evaluate on held-out tasks, against a randomly initialised policy ---
    num_tasks = 4 if args.tiny else 40
    result = maml_rl.evaluate(
        run_dir, num_tasks=num_tasks, num_steps=2, baselines=["random"], progress=False
    )
    for method, means in result.means.items():
        print(
            f"{method:>8}: mean return after 0, 1, 2 steps: {', '.join(f'{m:.2f}' for m in means)}"
        )

    # --- the per-task returns: [steps + 1, tasks] per method, the same tasks for every method ---
    maml, random = result.returns["maml"], result.returns["random"]
    gains = maml[-1] - maml[0]
    best = int(gains.argmax())
    print(f"task {best} gains most: {maml[0, best]:.2f} -> {maml[-1, best]:.2f} after 2 steps")
    print(f"maml beats random on {int((maml[-1] > random[-1]).sum())} of {maml.shape[1]} tasks")
    run = maml_rl.load_run(run_dir)
    print(f"{run.run_dir}: iteration {run.iteration + 1} of {run.cfg.num_batches}")


if __name__ == "__main__":
    main()
