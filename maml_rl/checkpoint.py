"""Checkpoints: atomic writes with a checksum, and loads that fail with one line on a missing,
corrupt or non-finite file.

A checkpoint holds the meta-parameters (theta, learnable step sizes), every RNG state, the
config and the iteration, so a resumed run continues bit for bit. Since format 2 the file is
`{"format": 2, "sha256": hex digest, "payload": uint8 tensor}`, the payload being the bytes
of the state as `torch.save` writes it: a flipped bit anywhere in them fails the checksum.
Format 1 files (the state itself, no checksum) still load.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Any

import torch

from maml_rl import artifacts
from maml_rl.errors import CheckpointError

FORMAT_VERSION = 2
LEGACY_FORMAT = 1
"""The state itself, without a checksum (checkpoints written before format 2)."""
REQUIRED_KEYS = ("format", "iteration", "theta", "step_size", "rng", "config")
PARAMETERS = ("theta", "step_size")


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` with the sha256 of its payload, through `artifacts.replacing`:
    a crash or SIGKILL leaves either the old file or the new one, never a truncated one."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    sealed = {
        "format": FORMAT_VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    artifacts.write_with(path, lambda handle: torch.save(sealed, handle))


def _torch_load(source: Path | io.BytesIO, path: Path, map_location: Any) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__})"
        ) from error


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by `save_atomic` (or an older one without a
    checksum): one-line CheckpointError for a missing, corrupt or foreign file, a checksum that
    does not match, or non-finite parameters."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = _torch_load(path, path, map_location)
    if isinstance(state, dict) and state.get("format") == FORMAT_VERSION:
        payload = state.get("payload")
        payload = payload.numpy().tobytes() if isinstance(payload, torch.Tensor) else b""
        if hashlib.sha256(payload).hexdigest() != state.get("sha256"):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its payload does not match its sha256 checksum; "
                "use the run's other checkpoint or train again"
            )
        inner = _torch_load(io.BytesIO(payload), path, map_location)
        state = {**inner, "format": FORMAT_VERSION} if isinstance(inner, dict) else inner
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a maml_rl checkpoint")
    if state["format"] not in (FORMAT_VERSION, LEGACY_FORMAT):
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']}, expected {FORMAT_VERSION}"
        )
    iteration = state["iteration"]
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise CheckpointError(f"{path} is not a maml_rl checkpoint (iteration {iteration!r})")
    _check_finite(state, path)
    return state


def check_parameters(theta: dict[str, Any], expected: dict[str, torch.Tensor], what: str) -> None:
    """A one-line CheckpointError naming the first parameter of `theta` (from `what`, a
    checkpoint) that the policy built from its config (`expected`) lacks, has not, or has in
    another shape: an edited or foreign checkpoint, refused before it is used."""
    missing = sorted(set(expected) - set(theta))
    extra = sorted(set(theta) - set(expected))
    if missing or extra:
        name, side = (missing[0], "lacks") if missing else (extra[0], "has an unknown")
        raise CheckpointError(f"{what} {side} parameter '{name}' of the run's policy")
    for name, value in theta.items():
        shape = tuple(getattr(value, "shape", ()))
        if shape != tuple(expected[name].shape):
            raise CheckpointError(
                f"{what}: parameter '{name}' has shape {list(shape)}, the run's policy "
                f"{list(expected[name].shape)}"
            )


def _check_finite(state: dict[str, Any], path: Path) -> None:
    """CheckpointError naming the first parameter (theta, step sizes) with a NaN or inf."""
    for group in PARAMETERS:
        values = state[group]
        if not isinstance(values, dict):
            raise CheckpointError(f"{path} is not a maml_rl checkpoint ({group} is not a dict)")
        for name, value in values.items():
            finite = (
                bool(torch.isfinite(value).all())
                if isinstance(value, torch.Tensor)
                else not isinstance(value, float) or math.isfinite(value)
            )
            if not finite:
                raise CheckpointError(
                    f"checkpoint {path} holds non-finite parameters ({group} {name!r}); "
                    "it cannot be evaluated, rendered or resumed"
                )
