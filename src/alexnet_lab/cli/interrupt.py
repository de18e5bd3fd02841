"""Ctrl-C and SIGTERM during training: stop at the next step boundary with a checkpoint.

`GracefulInterrupt` owns the signal handlers (a context manager) and is the engine callback.
"""

from __future__ import annotations

import signal
import threading

from alexnet_lab.cli import signals
from alexnet_lab.cli.signals import SIGNALS, ImmediateExit, Interrupted, exit_code, say  # noqa: F401
from alexnet_lab.engine.trainer import Callback


class GracefulInterrupt(Callback):
    """First SIGINT/SIGTERM: `should_stop()` turns true, so engine.run stops before training starts, or
    `fit` checkpoints at the next step boundary and raises StopRequested.

    Second one: `ImmediateExit` is raised wherever the main thread is (a third one kills the
    process outright). Handlers are installed only
    inside `with` (and only in the main thread, where Python allows it) and restored on exit.
    It takes over from `signals.StartupSignals`: a signal that arrived during start-up counts as
    the first one.
    """

    def __init__(self, stream=None):
        self.stream = stream
        self.signum: int | None = None
        self.training = False  # before the first step a stop saves nothing (there is nothing yet)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            self.signum = signals.take() if self.signum is None else self.signum
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
        then = ("finishing the current step, saving a checkpoint, then stopping" if self.training
                else "stopping before training starts")
        self._say(f"\nReceived {signal.Signals(signum).name}: {then}. Press Ctrl-C again to quit at once.\n")

    def on_train_start(self, info: dict) -> None:
        self.training = True

    def _say(self, text: str) -> None:
        say(text, self.stream)

    def should_stop(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum if self.signum is not None else signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum if self.signum is not None else signal.SIGINT)
