"""Stopping a command from outside: Ctrl-C (SIGINT) and SIGTERM both stop it with a
KeyboardInterrupt in the main thread, so that the run's `finally` blocks close its loggers and
samplers and say what was saved.

Python cannot raise an exception out of a finalizer (a ``__del__`` method, a weakref callback,
a generator closed by the garbage collector): a KeyboardInterrupt raised there by a signal
handler is reported as "Exception ignored in ..." and dropped, and the program goes on. A run
would then ignore the Ctrl-C, or, since later SIGTERMs are ignored while the clean-up runs,
ignore SIGTERM for good. `interrupt_handling` hands Python a hook for such dropped exceptions
(``sys.unraisablehook``) that delivers the signal again, so that it lands in ordinary code.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class Interrupts:
    """The state of one command's stop signals; `terminated` is True once SIGTERM arrived
    (the command then exits 143, not 130)."""

    def __init__(self) -> None:
        self.terminated = False
        self._previous_hook = sys.unraisablehook

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM: KeyboardInterrupt, and later SIGTERMs are ignored so that the clean-up
        finishes."""
        self.terminated = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    def on_unraisable(self, unraisable: Any) -> None:
        """A KeyboardInterrupt that Python dropped in a finalizer is delivered again (nothing
        printed); every other unraisable exception goes to the previous hook."""
        if not (
            isinstance(unraisable.exc_type, type)
            and issubclass(unraisable.exc_type, KeyboardInterrupt)
        ):
            self._previous_hook(unraisable)
            return
        # Delivered from another thread, started without waiting for it: a signal raised here
        # would run its handler at once, inside this hook, where its KeyboardInterrupt is
        # dropped too. The thread runs once the main thread lets go of the interpreter (after
        # this hook, the finalizer and the garbage collection), and the main thread handles the
        # signal at its next check, in ordinary code. Inside another finalizer, it comes back
        # here and goes round once more.
        signum = signal.SIGTERM if self.terminated else signal.SIGINT
        if self.terminated:
            signal.signal(signal.SIGTERM, self.on_sigterm)
        # interrupt_main does nothing where the signal has no Python handler
        _thread.start_new_thread(_thread.interrupt_main, (signum,))


@contextmanager
def interrupt_handling() -> Iterator[Interrupts]:
    """Within the block: SIGTERM raises KeyboardInterrupt as Ctrl-C does, and an interrupt
    dropped in a finalizer is delivered again. The previous SIGTERM handler and unraisable hook
    come back on exit. Outside the main thread (where signals cannot be handled) nothing
    changes."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous_handler = signal.signal(signal.SIGTERM, interrupts.on_sigterm)
    sys.unraisablehook = interrupts.on_unraisable
    try:
        yield interrupts
    finally:
        sys.unraisablehook = interrupts._previous_hook
        signal.signal(signal.SIGTERM, previous_handler)


__all__ = ["Interrupts", "interrupt_handling"]
