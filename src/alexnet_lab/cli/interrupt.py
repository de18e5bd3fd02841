"""Ctrl-C and SIGTERM during training: stop at the next step boundary with a checkpoint.

`GracefulInterrupt` owns the signal handlers (a context manager) and is the engine callback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from alexnet_lab.engine.trainer import Callback

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


class ImmediateExit(BaseException):
    """A second signal: leave at once, without another checkpoint.

    A BaseException so that no `except Exception` on the way swallows it; `finally` blocks still
    run, so a checkpoint being written is removed as a temp file, never left torn.
    """

    def __init__(self, signum: int):
        super().__init__(f"second {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = exit_code(signum)


class Interrupted(Exception):
    """Raised by the CLI after a stop on a signal; `cli.main` prints it and returns `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class GracefulInterrupt(Callback):
    """First SIGINT/SIGTERM: `should_stop()` turns true, so `fit` checkpoints and raises StopRequested.

    Second one: `ImmediateExit` is raised wherever the main thread is (a third one kills the
    process outright). Handlers are installed only
    inside `with` (and only in the main thread, where Python allows it) and restored on exit.
    """

    def __init__(self, stream=None):
        self.stream = stream
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            # The exception surfaces when the running tensor op returns; a third signal, should even
            # that be too slow, meets the default action and ends the process on the spot.
            for other in SIGNALS:
                signal.signal(other, signal.SIG_DFL)
            raise ImmediateExit(signum)
        self.signum = signum
        self._say(f"\nReceived {signal.Signals(signum).name}: finishing the current step, saving a "
                  "checkpoint, then stopping. Press Ctrl-C again to quit at once.\n")

    def _say(self, text: str) -> None:
        # Unbuffered write: a handler may interrupt a print to the same stream (re-entrant print fails).
        stream = self.stream or sys.stderr
        try:
            os.write(stream.fileno(), text.encode())
        except (AttributeError, OSError, ValueError):
            stream.write(text)  # streams without a file descriptor (pytest's capture)

    def should_stop(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum if self.signum is not None else signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum if self.signum is not None else signal.SIGINT)
