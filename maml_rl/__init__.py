"""maml_rl: Model-Agnostic Meta-Learning for RL, vectorized in PyTorch."""

import os

# Intel MKL (torch's CPU BLAS) may round a matrix product differently depending on where its
# rows sit in memory; strict conditional numerical reproducibility makes results independent
# of alignment at no measured cost, so a slice of a meta-batch sampled alone (a Ray actor's
# share) gives bit-identical trajectories. Read by MKL when it first runs: set it before any
# torch computation. A value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
