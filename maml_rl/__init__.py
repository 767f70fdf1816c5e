"""maml_rl: Model-Agnostic Meta-Learning for RL, vectorized in PyTorch."""

import os

# Intel MKL (torch's CPU BLAS) may round a matrix product differently depending on where its
# rows sit in memory; strict conditional numerical reproducibility makes results independent
# of alignment at no measured cost, so a slice of a meta-batch sampled alone (a Ray actor's
# share) gives bit-identical trajectories. Read by MKL when it first runs: set it before any
# torch computation. A value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

# Offscreen MuJoCo rendering (`maml-rl render`): MuJoCo picks its OpenGL backend when it is
# first imported, and its default (glfw) needs a display; without one, default to EGL. Set
# here because the task families import maml_rl before mujoco. A value the user set is kept.
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("MUJOCO_GL", "egl")
