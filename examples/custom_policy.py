"""Meta-train your own policy network: an MLP with LayerNorm on 2D navigation, beside the
built-in MLP, then evaluate both on the same held-out tasks.

    python examples/custom_policy.py [--out runs/custom_policy] [--iterations 100] [--tiny]

The policy is any `torch.nn.Module` built by a callable from the observation and action
spaces; its `forward(observations)` returns `maml_rl.Normal(mean, log_std)` (Box actions) or
`maml_rl.Categorical(logits)` (Discrete actions). Here the class itself is the callable and is
given to the config from Python; in a YAML config it is `policy: my_module:LayerNormMLP`.
The run records it, so `maml-rl evaluate`, `render` and `train --resume` rebuild it.

--tiny runs it in seconds at toy sizes (what CI does, tests/test_examples.py). At full size
each run trains 100 iterations (a few minutes each on two cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import maml_rl


class LayerNormMLP(nn.Module):
    """mean = Linear(tanh(LayerNorm(Linear(tanh(LayerNorm(Linear(obs))))))), a learned
    state-independent log-std; observations [B, obs_dim] -> Normal([B, act_dim], [act_dim])."""

    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, hidden: int = 64
    ) -> None:
        super().__init__()
        obs_dim, act_dim = observation_space.shape[0], action_space.shape[0]
        self.body = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.LayerNorm(hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.Tanh(),
            nn.Linear(hidden, act_dim),
        )
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, observations: torch.Tensor) -> maml_rl.Normal:
        return maml_rl.Normal(self.body(observations), self.log_std)


TINY = dict(num_batches=2, meta_batch_size=2, fast_batch_size=2, cg_iters=2,
            env_kwargs={"max_episode_steps": 10})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/custom_policy", help="folder of the two runs")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for CI")
    args = parser.parse_args()
    out = Path(args.out)
    sizes = TINY if args.tiny else {"num_batches": args.iterations}

    configs = {
        "built-in": maml_rl.load_config("navigation", seed=args.seed, **sizes),
        "layernorm": maml_rl.load_config(
            "navigation", seed=args.seed, policy=LayerNormMLP, policy_kwargs={"hidden": 64},
            **sizes,
        ),
    }  # fmt: skip
    late = {}
    for name, cfg in configs.items():
        rows = maml_rl.train(cfg, out / name, overwrite=True, progress=False)
        last = rows[-max(1, len(rows) // 4) :]  # the last quarter of the iterations
        late[name] = float(np.mean([row["returns/post_update"] for row in last]))

    num_tasks = 3 if args.tiny else 40
    print(f"post-update training return over the last quarter of {len(rows)} iterations:")
    for name, value in late.items():
        print(f"  {name:>10}: {value:.2f}")
    print(f"mean return on {num_tasks} held-out tasks after 0, 1, 2, 3 steps:")
    for name in configs:
        result = maml_rl.evaluate(out / name, num_tasks=num_tasks, num_steps=3, progress=False)
        means = ", ".join(f"{m:.2f}" for m in result.means["maml"])
        print(f"  {name:>10}: {means}")


if __name__ == "__main__":
    main()
