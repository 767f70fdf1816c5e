"""The errors that reach the user as one line (no traceback), in a module that imports nothing,
so that the CLI can name them before it imports torch, Gymnasium or Ray."""

from __future__ import annotations


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError with an errno that `error` is, or that it was raised from or while handling
    (a library that turns a full disk into its own RuntimeError while cleaning up); None."""
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class CheckpointError(ValueError):
    """A checkpoint or run directory that cannot be used; the message is one line."""


class RaySamplerError(RuntimeError):
    """Sampling on Ray failed (no Ray, no cluster, actors dead twice, timeout); one line."""


class TaskFamilyError(ValueError):
    """A task family that cannot be found, built or used; the message is one line."""


class RunStopped(RuntimeError):
    """A run that cannot go on (repeated non-finite data); the message is one line."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was saved. The CLI exits with 130."""


class ResourceError(ValueError):
    """Sizes whose estimated memory exceeds what the machine has; the message is one line."""


class StopTraining(Exception):
    """Raised by a training callback to end the run cleanly after the current iteration (as
    returning False does); the iteration is saved and the run resumes with ``resume=True``.

    >>> def stop_when_good(info):
    ...     if info.metrics["returns/post_update"] > -20:
    ...         raise StopTraining("good enough")
    """


class NonFiniteError(RuntimeError):
    """An environment returned a non-finite observation or reward (message names task, step);
    training skips the iteration, elsewhere (evaluate, render) it is one line."""


class PolicyError(ValueError):
    """A policy that cannot be built, or that the algorithm cannot use; the message is one line."""
