"""Learning test: the shipped 2D navigation config, a fixed seed, 30 meta-iterations.

Cost: about 4 minutes on a quiet 2-core machine (7-8 s per iteration with one torch thread,
most of it the 11 Hessian-vector products of the TRPO step); marked `slow`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maml_rl import config
from maml_rl.cli import find_config
from maml_rl.train import train

ITERATIONS = 30


@pytest.mark.slow
def test_navigation_meta_learns_to_adapt(tmp_path: Path) -> None:
    cfg = config.load(find_config("navigation"), {"num_batches": ITERATIONS, "seed": 1})
    rows = train(cfg, tmp_path / "run", progress=False, tensorboard=False)
    pre = np.array([r["returns/pre_update"] for r in rows])
    post = np.array([r["returns/post_update"] for r in rows])
    # adaptation helps: the post-update return is clearly above the pre-update return ...
    assert post[-5:].mean() > pre[-5:].mean() + 5.0, (pre[-5:], post[-5:])
    # ... and meta-training helps: clearly above its own first iteration
    assert post[-5:].mean() > post[0] + 40.0, (post[0], post[-5:])
    # ... by steps the line search takes: a wrong meta-gradient or curvature gets rejected
    assert sum(r["meta/accepted"] for r in rows) >= 0.9 * ITERATIONS
