"""Ctrl-C and SIGTERM during training (`GracefulInterrupt`, the engine callback that owns the handlers): stop at
the next step boundary with a checkpoint; a signal that came during start-up counts as the first."""

from __future__ import annotations

import threading

from alexnet_lab.cli import signals
from alexnet_lab.cli.signals import ImmediateExit, Interrupted, SignalRecorder  # noqa: F401
from alexnet_lab.engine.trainer import Callback


class GracefulInterrupt(SignalRecorder, Callback):
    """First SIGINT/SIGTERM: `should_stop()` turns true, so engine.run stops before training starts, or `fit`
    checkpoints at the next step boundary and raises StopRequested; the second: `ImmediateExit`."""

    training = False  # before the first step a stop saves nothing (there is nothing yet)

    def __enter__(self) -> "GracefulInterrupt":
        super().__enter__()
        if threading.current_thread() is threading.main_thread() and self.signum is None:
            self.signum = signals.take()
        return self

    def announcement(self) -> str:
        return ("finishing the current step, saving a checkpoint, then stopping" if self.training
                else "stopping before training starts")

    def on_train_start(self, info: dict) -> None:
        self.training = True

    def should_stop(self) -> bool:
        return self.signum is not None
