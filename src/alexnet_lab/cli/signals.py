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


class SignalRecorder:
    """In `with` (main thread only, where Python allows handlers): the first SIGINT/SIGTERM is recorded
    (`signum`) and announced; the second raises `ImmediateExit` wherever the program is; the third meets the
    default action. The handlers from before are given back on leaving (`release`, idempotent)."""

    def __init__(self, stream=None):
        self.stream = stream
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def installs(self, signum: int) -> bool:
        return True

    def announcement(self) -> str | None:
        """What happens after a first signal, or None to stay silent."""
        return None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                if self.installs(signum):
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # surfaces when the running tensor op returns; a third signal kills
            for other in self._previous:
                signal.signal(other, signal.SIG_DFL)
            raise ImmediateExit(signum)
        self.signum = signum
        then = self.announcement()
        if then:
            say(f"\nReceived {signal.Signals(signum).name}: {then}. Press Ctrl-C again to quit at once.\n", self.stream)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum if self.signum is not None else signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum if self.signum is not None else signal.SIGINT)


class StartupSignals(SignalRecorder):
    """`with StartupSignals() as signals:` on main's first line: SIGINT/SIGTERM are only recorded, and acted on
    at safe points (`check`) or by `GracefulInterrupt` when training starts. Python's KeyboardInterrupt in the
    middle of an import leaves a half-made module, in a `__del__` it is lost, in C++ it may abort. A signal
    ignored when the process started (a script's `cmd &`) stays ignored."""

    active: "StartupSignals | None" = None  # the one installed (signal handlers are per process)
    announce = False  # set once the command runs: a first signal then says what happens

    def installs(self, signum: int) -> bool:
        return signal.getsignal(signum) is not signal.SIG_IGN

    def announcement(self) -> str | None:
        return "stopping before training starts" if self.announce else None

    def __enter__(self) -> "StartupSignals":
        if threading.current_thread() is threading.main_thread():
            StartupSignals.active = super().__enter__()
        return self

    def release(self) -> None:
        super().release()
        if StartupSignals.active is self:
            StartupSignals.active = None


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
