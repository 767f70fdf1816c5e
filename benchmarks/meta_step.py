"""Wall time of one meta-iteration, split into sampling, adaptation, meta-gradient, CG and line
search, for each Hessian-vector-product mode (and HVP task subsampling), measured side by side.

    python benchmarks/meta_step.py [--env halfcheetah-vel] [--device cpu|cuda] [--repeats 2]
        [--modes HVP:FRACTION[:ESTIMATOR],...] [--num-steps 1,2,3]

A mode is an HVP mode, the fraction of tasks its products use and, optionally, the
meta-gradient estimator (`meta_gradient`: maml, emaml, lvc, dice; default the config's), e.g.
``--modes gauss_newton:1.0:maml,gauss_newton:1.0:lvc,gauss_newton:1.0:dice`` for the cost each
estimator adds. Every mode optimises from the same theta on the same sampled batch.
``--num-steps 1,2,3`` times each mode with 1, 2 and 3 inner steps (default: the config's), for
the cost of multi-step meta-training.
Prints one row per mode and the ratio of the full meta-iteration to its sampling time.
Without OMP_NUM_THREADS in the environment, torch's threads are chosen as in training with
``torch_threads: null`` (maml_rl/threads.py: every core alone, fewer beside other work).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from maml_rl.runtime import configure_process

configure_process()  # as `maml-rl train` does (maml_rl/runtime.py): before torch is imported

import torch

from maml_rl import machine
from maml_rl.build import Streams, build
from maml_rl.config import load
from maml_rl.configs import find_config
from maml_rl.maml import collect, draw_seeds, meta_step
from maml_rl.policy import parameters_of
from maml_rl.threads import AutoThreads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="halfcheetah-vel", help="config name in experiments/")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--meta-batch-size", type=int, default=None)
    parser.add_argument(
        "--modes", default="finite_difference:1.0,exact:1.0,finite_difference:0.25,exact:0.25"
    )
    parser.add_argument("--num-steps", default=None, help="inner steps, e.g. 1,2,3")
    args = parser.parse_args()
    print(f"# machine: {machine.describe()}", flush=True)

    overrides = {"device": args.device}
    if args.meta_batch_size:
        overrides["meta_batch_size"] = args.meta_batch_size
    cfg = load(find_config(args.env), overrides)
    step_counts = [int(s) for s in args.num_steps.split(",")] if args.num_steps else [cfg.num_steps]
    streams = Streams.from_seed(cfg.seed)
    family, policy, sampler = build(cfg, streams.policy_init, num_steps=max(step_counts))
    theta = parameters_of(policy)
    auto_threads = None if "OMP_NUM_THREADS" in os.environ else AutoThreads()
    print(
        f"{cfg.env}: N={cfg.meta_batch_size} tasks x K={cfg.fast_batch_size} trajectories, "
        f"policy {list(cfg.hidden_sizes)}, device {args.device}, torch threads "
        f"{'auto' if auto_threads else torch.get_num_threads()}"
    )
    header = ("mode", "sampling", "adaptation", "meta_grad", "cg", "line_search", "total", "ratio")
    print(" ".join(f"{h:>14s}" for h in header))  # modes up to 14 characters stay aligned
    modes = [m.split(":") for m in args.modes.split(",")]
    for repeat in range(args.repeats):
        for num_steps in step_counts:
            tasks = family.sample_tasks(cfg.meta_batch_size, streams.tasks)
            seeds = draw_seeds(streams.environments, num_steps + 1)
            start = time.perf_counter()
            data, _ = collect(sampler, theta, tasks, [cfg.fast_lr] * num_steps, seeds, cfg)
            sampling = time.perf_counter() - start
            for hvp, fraction, *estimator in modes:
                mode_cfg = dataclasses.replace(
                    cfg,
                    num_steps=num_steps,
                    hvp=hvp,
                    hvp_subsample=float(fraction),
                    meta_gradient=estimator[0] if estimator else cfg.meta_gradient,
                )
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                if auto_threads is not None:
                    auto_threads.start()
                _, _, info = meta_step(policy, theta, {}, data, mode_cfg)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                optimisation = time.perf_counter() - start
                threads = torch.get_num_threads()
                if auto_threads is not None:
                    auto_threads.stop()
                t = info.timings
                total = sampling + optimisation
                label = ":".join([hvp, fraction, *estimator])
                if len(step_counts) > 1:
                    label += f" S={num_steps}"
                row = (
                    label,
                    *(f"{v:.3f}" for v in (sampling, t["adaptation_s"], t["meta_gradient_s"],
                                           t["cg_s"], t["line_search_s"], total)),
                    f"{total / sampling:.2f}x",
                )  # fmt: skip
                print(
                    " ".join(f"{v:>14s}" for v in row),
                    f"threads {threads}",
                    "(warm-up)" if repeat == 0 else "",
                )
    sampler.close()


if __name__ == "__main__":
    from maml_rl.cli import USER_ERRORS

    try:
        main()
    except USER_ERRORS as error:  # a bad --env or --device: one line, as the CLI says it
        raise SystemExit(f"meta_step.py: error: {error}") from None
