"""Ctrl-C and SIGTERM from the first line of `main` until training takes over: recorded, never raised.

Imports nothing heavy, so `main` can install `StartupSignals` before anything else is imported.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def say(text: str, stream=None) -> None:
    """Unbuffered write for signal handlers (a handler may interrupt a print to the same stream)."""
    stream = stream or sys.stderr
    try:
        os.write(stream.fileno(), text.encode())
    except (AttributeError, OSError, ValueError):
        stream.write(text)  # streams without a file descriptor (pytest's capture)


class ImmediateExit(BaseException):
    """A second signal: leave at once, without another checkpoint (a BaseException: no `except Exception`
    swallows it; `finally` blocks still remove a checkpoint's temp file)."""

    def __init__(self, signum: int):
        super().__init__(f"second {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = exit_code(signum)


class Interrupted(Exception):
    """Raised by the CLI after a stop on a signal; `cli.main` prints it and returns `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StartupSignals:
    """`with StartupSignals() as signals:` on main's first line: SIGINT/SIGTERM are only recorded, and acted on
    at safe points (`check`) or by `GracefulInterrupt` when training starts. Python's KeyboardInterrupt in the
    middle of an import leaves a half-made module, in a `__del__` it is lost, in C++ it may abort. A second
    signal raises `ImmediateExit`, a third meets the default action; one ignored at start stays ignored."""

    active: "StartupSignals | None" = None  # the one installed (signal handlers are per process)

    def __init__(self, stream=None):
        self.stream = stream
        self.signum: int | None = None
        self.announce = False  # set once the command runs: a first signal then says what happens
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StartupSignals":
        if threading.current_thread() is threading.main_thread():  # where Python allows handlers
            for signum in SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._record)
            StartupSignals.active = self
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        """Give the signals back to the handlers from before `__enter__` (idempotent)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if StartupSignals.active is self:
            StartupSignals.active = None

    def _record(self, signum: int, frame) -> None:
        if self.signum is not None:
            for other in SIGNALS:  # a third signal ends the process on the spot
                if other in self._previous:
                    signal.signal(other, signal.SIG_DFL)
            raise ImmediateExit(signum)
        self.signum = signum
        if self.announce:
            say(f"\nReceived {signal.Signals(signum).name}: stopping before training starts. Press Ctrl-C "
                "again to quit at once.\n", self.stream)

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum if self.signum is not None else signal.SIGINT)


def pending() -> int | None:
    """The signal recorded since `main` started and not yet acted on, if any."""
    active = StartupSignals.active
    return active.signum if active is not None else None


def take() -> int | None:
    """`pending()`, which the caller now acts on (`GracefulInterrupt` when training starts)."""
    active = StartupSignals.active
    if active is None:
        return None
    signum, active.signum = active.signum, None
    return signum


def check(what: str = "before training started") -> None:
    """A safe point: if a signal has arrived, stop here with `Interrupted` (exit status 130/143)."""
    signum = pending()
    if signum is not None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name} {what}.", exit_code(signum))
