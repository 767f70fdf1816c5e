"""maml_rl: Model-Agnostic Meta-Learning for RL, vectorized in PyTorch.

The Python API (`maml_rl.api`), beside the ``maml-rl`` command line::

    import maml_rl

    cfg = maml_rl.load_config("navigation", num_batches=20)
    maml_rl.train(cfg, "runs/navigation")
    result = maml_rl.evaluate("runs/navigation", num_tasks=40, num_steps=3)
    result.returns["maml"]  # [S + 1, N]: per-task mean return after 0..S gradient steps

Importing maml_rl changes nothing in the process (no environment variables, no allocator
settings) and imports no torch: the names below load on first use, and the process-wide
settings of a run are applied where it starts (`maml_rl.runtime.configure_process`).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

EXPORTS = {
    "Config": "maml_rl.config",
    "ConfigError": "maml_rl.config",
    "load_config": "maml_rl.api",
    "train": "maml_rl.api",
    "evaluate": "maml_rl.api",
    "load_run": "maml_rl.evaluate",
    "IterationInfo": "maml_rl.train",
    "StopTraining": "maml_rl.errors",
    "Evaluation": "maml_rl.evaluate",
    "LoadedRun": "maml_rl.evaluate",
    "Normal": "maml_rl.policy",
    "Categorical": "maml_rl.policy",
    "configure_process": "maml_rl.runtime",
}
"""Public name -> the module that defines it, imported on first use."""

if TYPE_CHECKING:
    from maml_rl.api import evaluate, load_config, train
    from maml_rl.config import Config, ConfigError
    from maml_rl.errors import StopTraining
    from maml_rl.evaluate import Evaluation, LoadedRun, load_run
    from maml_rl.policy import Categorical, Normal
    from maml_rl.runtime import configure_process
    from maml_rl.train import IterationInfo


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'maml_rl' has no attribute '{name}'")
    value = getattr(importlib.import_module(EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API (what tab completion offers), not this module's own imports."""
    return sorted({*__all__, "__version__"})


class _Package(ModuleType):
    """`maml_rl.train` and `maml_rl.evaluate` stay the API functions: importing the modules of
    the same names (maml_rl/train.py, maml_rl/evaluate.py) would otherwise rebind them. Reach
    those modules with ``from maml_rl.train import ...`` or ``importlib.import_module``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in EXPORTS and isinstance(value, ModuleType):  # `types` would be maml_rl.types
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "Categorical",
    "Config",
    "ConfigError",
    "Evaluation",
    "IterationInfo",
    "LoadedRun",
    "Normal",
    "StopTraining",
    "configure_process",
    "evaluate",
    "load_config",
    "load_run",
    "train",
]
