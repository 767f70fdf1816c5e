"""maml_rl: Model-Agnostic Meta-Learning for RL, vectorized in PyTorch."""

import os

# Intel MKL (torch's CPU BLAS) may round a matrix product differently depending on where its
# rows sit in memory; strict conditional numerical reproducibility makes results independent
# of alignment at no measured cost, so a slice of a meta-batch sampled alone (a Ray actor's
# share) gives bit-identical trajectories. Read by MKL when it first runs: set it before any
# torch computation. A value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

# torch's OpenMP threads spin after every parallel region by default; when another CPU-bound
# process (a second run, the physics threads) wants the cores, two spinning threads per run
# made a navigation meta-iteration 5x slower than one thread (benchmarks/speed.py: 16.9 s
# against 4.35 s), while with passive waiting two threads are the faster choice alone (3.3 s
# against 5.0 s) and beside a twin run (4.8 s against 5.1 s). Read by libgomp when torch is
# imported: set before it. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# Freed tensors stay in the heap for the next one of their size instead of going back to the
# system page by page: 1.6x faster CG products (allocator.py). MAML_RL_MALLOC=system opts out.
from maml_rl.allocator import configure_from_environment

configure_from_environment()

# Offscreen MuJoCo rendering (`maml-rl render`): MuJoCo picks its OpenGL backend when it is
# first imported, and its default (glfw) needs a display; without one, default to EGL. Set
# here because the task families import maml_rl before mujoco. A value the user set is kept.
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("MUJOCO_GL", "egl")
