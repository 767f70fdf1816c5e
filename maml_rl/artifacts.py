"""Run artefacts: written atomically, validated when read, and the lock of a run directory.

Every file `maml_rl` writes into a run directory (checkpoints, `run.json`, `metrics.jsonl` when
it is rewritten, the evaluation's JSON, CSV and PNG files, training plots, renders) goes
through `replacing`: the writer fills a temporary file beside the target (same directory, so
the same file system), which is flushed, fsynced and `os.replace`d over the target. A crash or
SIGKILL at any point leaves the old file or the new one, never half of one; a write that fails
(a full disk, a read-only directory) removes its temporary file and ends in one line naming
the file (`ArtifactError`). Readers turn a file that is not what it should be into the same
one-line error (`read_json` here; `checkpoint.load`, `evaluation_files.read_task_returns`).

`locked` is the one lock every command that writes a run directory takes: `train` holds
`DIR/.lock`, `evaluate` holds `DIR/eval/.lock`, and `train --overwrite` takes every lock below
the directory before it deletes anything.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from maml_rl.errors import CheckpointError, os_error_in

try:
    import fcntl
except ImportError:  # Windows: run directories are not locked
    fcntl = None  # type: ignore[assignment]


class ArtifactError(CheckpointError):
    """A run file that cannot be written, or read back as what it should be (empty, cut,
    malformed, inconsistent with its protocol); the message names the file, in one line."""


LOCK = ".lock"
RUN_ENTRIES = frozenset(
    {"checkpoint_latest.pt", "checkpoint_best.pt", "run.json", "config.yaml", "metrics.jsonl",
     "tb", "eval", "baselines", "render", "training.png", LOCK}
)  # fmt: skip
"""The names `maml_rl` writes directly in a run directory: what `train --overwrite` (and a new
start over a failed one) may delete there. Everything else belongs to the user."""

_TEMPORARY = re.compile(r"\.(?P<name>.+?)(?:\.[0-9a-f]{8})?\.tmp(?:\..*)?")


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside `path` that keeps its suffix (for writers that choose the
    format by it): `.NAME.<8 hex>.tmp.SUFFIX`, hidden, unique per write."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")


def is_run_temporary(name: str) -> bool:
    """Whether `name` is the temporary file of one of RUN_ENTRIES (left by a killed write)."""
    match = _TEMPORARY.fullmatch(name)
    return match is not None and match["name"] in RUN_ENTRIES


def remove_stale_temporaries(directory: Path, names: Iterable[str] = RUN_ENTRIES) -> None:
    """Delete the temporary files of `names` in `directory` that killed writes left behind;
    call it only while holding the directory's lock (no write of its own is under way)."""
    names = set(names)
    for path in directory.glob(".*tmp*"):
        match = _TEMPORARY.fullmatch(path.name)
        if match is not None and match["name"] in names and path.is_file():
            path.unlink(missing_ok=True)


def is_run_entry(name: str) -> bool:
    """Whether `name` is written by `maml_rl` in a run directory: one of RUN_ENTRIES, or a
    temporary file of one left by a killed write."""
    return name in RUN_ENTRIES or is_run_temporary(name)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for the caller to write `path`'s new content to; when the block
    ends, the temporary file is fsynced and renamed over `path`. If the block or the rename
    fails the temporary file is removed, `path` is left as it was, and an OSError (e.g. errno
    28, no space left on device) becomes a one-line ArtifactError naming `path`."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with tmp.open("rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with suppress(OSError):  # a read-only file system refuses even this (EROFS)
            tmp.unlink(missing_ok=True)
        cause = os_error_in(error)  # torch.save hides a full disk behind its own RuntimeError
        if cause is None and isinstance(error, OSError):
            cause = error
        if cause is not None:
            reason = cause.strerror or str(error)
            raise ArtifactError(f"cannot write {path}: {reason}; it was left as it was") from error
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort: not every system can open one)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_with(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Atomically replace `path` with what `write(handle)` writes to a binary handle."""
    with replacing(path) as tmp, tmp.open("wb") as handle:
        write(handle)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace `path` with `data`."""

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    write_with(path, write)


def write_text(path: str | Path, text: str) -> None:
    """Atomically replace `path` with `text` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def require_run_dir(run_dir: Path) -> None:
    """A one-line CheckpointError unless `run_dir` is a directory: not found, or a file (a
    checkpoint or another file of a run, given instead of its directory)."""
    if run_dir.is_dir():
        return
    if run_dir.exists():
        raise CheckpointError(
            f"{run_dir} is a file, not a run directory; give the directory that holds the run "
            f"({run_dir.parent})"
        )
    raise CheckpointError(f"run directory not found: {run_dir}")


def read_json(path: str | Path, remedy: str) -> Any:
    """The JSON value in `path`; an unreadable, empty or malformed file is a one-line
    ArtifactError naming it and what to do (`remedy`)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        if not text.strip():
            raise ValueError("it is empty")
        return json.loads(text)
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError included
        reason = error.strerror if isinstance(error, OSError) else str(error).splitlines()[0]
        raise ArtifactError(f"{path} cannot be read ({reason}); {remedy}") from None


def read_saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The mapping in a run's ``config.yaml`` as `maml-rl train` saved it, None when the run has
    none (an ``evaluate --out`` folder); an unreadable or malformed file is a one-line
    ArtifactError naming it. Training, evaluation and rendering take the config from the
    checkpoint; config.yaml serves plots' labels and `compare`'s checks."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    remedy = "restore or delete it (the run's checkpoint holds its config)"
    try:
        saved = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error).splitlines()[0]
        raise ArtifactError(f"{path} cannot be read ({reason}); {remedy}") from None
    if not isinstance(saved, dict):
        raise ArtifactError(f"{path} is not a mapping of config keys; {remedy}")
    return saved


@contextmanager
def locked(lock_path: str | Path, busy: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if missing) for the block; if another
    process holds it for longer than `wait_s` seconds, a one-line ArtifactError `busy`. The
    lock dies with its holder (POSIX `flock`; not taken where `fcntl` is missing)."""
    deadline = time.monotonic() + wait_s
    try:
        handle = Path(lock_path).open("a")
    except OSError as error:  # a read-only directory
        raise ArtifactError(f"cannot lock {lock_path}: {error.strerror or error}") from None
    with handle:
        while fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ArtifactError(busy) from None
                time.sleep(0.1)
        yield
