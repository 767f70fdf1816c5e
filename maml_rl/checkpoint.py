"""Checkpoints: atomic writes, and loads that fail with one line on a missing or corrupt file.

A checkpoint holds the meta-parameters (theta, learnable step sizes), every RNG state, the
config and the iteration, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from maml_rl.errors import CheckpointError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "iteration", "theta", "step_size", "rng", "config")


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` through a temporary file and `os.replace`: a crash or SIGKILL
    leaves either the old file or the new one, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        torch.save({"format": FORMAT_VERSION, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by `save_atomic`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__})"
        ) from error
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a maml_rl checkpoint")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']}, expected {FORMAT_VERSION}"
        )
    return state
