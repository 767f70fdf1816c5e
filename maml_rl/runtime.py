"""Process-wide settings, applied where a run starts (never on ``import maml_rl``).

`configure_process()` is called by the command line's ``main`` before it imports torch, and by
the Python API's `maml_rl.train` and `maml_rl.evaluate`. It applies:

- ``MKL_CBWR=AUTO,STRICT``: Intel MKL (torch's CPU BLAS) may round a matrix product differently
  depending on where its rows sit in memory; strict conditional numerical reproducibility makes
  results independent of alignment at no measured cost, so a slice of a meta-batch sampled alone
  (a Ray actor's share) gives bit-identical trajectories.
- ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP threads spin after every parallel region by
  default; when another CPU-bound process (a second run, the physics threads) wants the cores,
  two spinning threads per run made a navigation meta-iteration 5x slower than one thread
  (benchmarks/speed.py: 16.9 s against 4.35 s), while with passive waiting two threads are the
  faster choice alone (3.3 s against 5.0 s) and beside a twin run (4.8 s against 5.1 s).
- ``MUJOCO_GL=egl`` where there is no display (neither ``DISPLAY`` nor ``WAYLAND_DISPLAY``):
  MuJoCo picks its OpenGL backend when it is first imported, and its default (glfw) needs a
  display; offscreen rendering (``maml-rl render``) needs EGL there.
- glibc's malloc keeps freed tensor memory for the next tensor (`maml_rl.allocator`): 1.6x
  faster conjugate-gradient products.

A variable the user already set is kept. MKL and libgomp read their variables once, when torch
is imported (MKL: when it first runs): from Python, the two take effect in this process only if
``configure_process()`` (or `maml_rl.train`) runs before ``import torch``; they are set anyway
for the worker processes a run starts. The allocator part applies whenever it is called.

Opt-outs: ``MAML_RL_PROCESS_SETTINGS=off`` (or ``configure_process(enabled=False)``, or
``maml_rl.train(..., process_settings=False)``) changes nothing at all;
``MAML_RL_MALLOC=system`` keeps only glibc's allocator defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from maml_rl.allocator import configure_from_environment

SWITCH = "MAML_RL_PROCESS_SETTINGS"
"""Set to ``off`` (or 0, false, no) to leave the process as it is."""
ENVIRONMENT = {"MKL_CBWR": "AUTO,STRICT", "OMP_WAIT_POLICY": "PASSIVE"}
"""Variables set unless the user set them (read by MKL and libgomp when torch loads)."""
HEADLESS_ENVIRONMENT = {"MUJOCO_GL": "egl"}
"""Set too where there is no display."""


@dataclass(frozen=True)
class ProcessSettings:
    """What `configure_process` changed."""

    environment: dict[str, str] = field(default_factory=dict)
    """The environment variables it set (those the user had set are kept, not listed)."""
    allocator: bool = False
    """Whether glibc's malloc thresholds were raised (`maml_rl.allocator`)."""


def settings_enabled() -> bool:
    """False where ``MAML_RL_PROCESS_SETTINGS`` is off, 0, false or no."""
    return os.environ.get(SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def configure_process(enabled: bool = True) -> ProcessSettings:
    """Apply the process-wide settings of a run (module docstring); returns what changed.

    Nothing changes when ``enabled`` is False or ``MAML_RL_PROCESS_SETTINGS=off``. Calling it
    again is harmless. Call it first thing in a script, before ``import torch``, for the
    thread-waiting and MKL settings to apply to this process::

        from maml_rl.runtime import configure_process

        configure_process()
        import torch  # noqa: E402
    """
    if not (enabled and settings_enabled()):
        return ProcessSettings()
    wanted = dict(ENVIRONMENT)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        wanted |= HEADLESS_ENVIRONMENT
    changed = {name: value for name, value in wanted.items() if name not in os.environ}
    os.environ.update(changed)
    return ProcessSettings(changed, configure_from_environment())


def configure_worker_signals() -> None:
    """In a sampler's worker process: Ctrl-C is left to the parent (SIGINT ignored; the parent
    closes its workers), and the parent's SIGTERM ends the worker at once (the default action),
    whatever handler it inherited by fork (`maml-rl`'s turns SIGTERM into KeyboardInterrupt,
    which would print a traceback per worker). Does nothing in the main process (Gymnasium's
    AsyncVectorEnv calls its environment factory there once, for the spaces)."""
    import multiprocessing
    import signal

    if multiprocessing.parent_process() is None:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
