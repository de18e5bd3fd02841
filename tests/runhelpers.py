"""Helpers for the tests that run `train` (through the CLI or `fit`) on tiny synthetic data, check what
it printed, and compare two runs.

The data folders are conftest.py's `data_dir` (64/32 images) and `data_dir_512` (512/64 images).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.run_dir import RunWriter, read_metrics
from alexnet_lab.engine.trainer import Callback, fit

SRC = Path(__file__).resolve().parents[1] / "src"
TIMING = {"elapsed_s"}  # the only fields of a metrics row that may differ between equal runs
TIMING_STATE = {"step_seconds", "wall_seconds", "time_to_target_s", "metrics"}


def train_args(data_dir, out, *extra) -> list[str]:
    """`train` LeNet for 1 epoch at batch 32 on the CPU (2 steps on `data_dir`)."""
    return ["train", "--model", "lenet", "--data-dir", str(data_dir), "--epochs", "1", "--batch-size", "32",
            "--device", "cpu", "--out", str(out), *extra]


def recipe_args(data_dir, out, *extra) -> list[str]:
    """`train` LeNet for 2 epochs of a deterministic one-cycle recipe with momentum and augmentation,
    every step of which a resume must reproduce (16 steps an epoch on `data_dir_512`)."""
    return ["train", "--model", "lenet", "--data-dir", str(data_dir), "--epochs", "2", "--batch-size", "32",
            "--lr", "0.1", "--momentum", "0.9", "--schedule", "onecycle", "--augment", "--deterministic",
            "--device", "cpu", "--limit-test", "64", "--out", str(out), *extra]


def config_for(data_dir, **changes):
    """The config of `recipe_args`, for `fit`."""
    values = dict(model="lenet", epochs=2, batch_size=32, lr=0.1, momentum=0.9, schedule="onecycle",
                  augment=True, deterministic=True, device="cpu", data_dir=str(data_dir))
    return make_config("d2l", **{**values, **changes})


def last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def run_fit(config, out: Path, extra=(), resume=None):
    """`fit` writing its run folder `out` as `train` does, with callbacks `extra`."""
    out.mkdir(exist_ok=True)
    return fit(config, [RunWriter(out, config.to_dict(), resumed=resume), *extra], resume=resume)


def assert_same_run(a: Path, b: Path) -> None:
    """Final checkpoints bit-identical (weights, optimizer, schedule, RNG, counters); same metrics."""
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for key in ca["model_state"]:
        assert torch.equal(ca["model_state"][key], cb["model_state"][key]), key
    for i, state in ca["optimizer_state"]["state"].items():
        assert torch.equal(state["momentum_buffer"], cb["optimizer_state"]["state"][i]["momentum_buffer"])
    assert ca["scheduler_state"] == cb["scheduler_state"]
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    strip = lambda s: {k: v for k, v in s.items() if k not in TIMING_STATE}  # noqa: E731
    assert strip(ca["run_state"]) == strip(cb["run_state"])
    rows_a, rows_b = read_metrics(a), read_metrics(b)
    assert len(rows_a) == len(rows_b) > 0
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}


def signal_at(monkeypatch, step: int, *signums):
    """Make `train` send itself `signums` after step `step` (a real signal through the real handler);
    returns a function that undoes it."""
    import alexnet_lab.engine.run as train_cli

    class SendSignal(Callback):
        def on_step(self, s):
            if s == step:
                for signum in signums:
                    os.kill(os.getpid(), signum)

    real_fit = train_cli.fit
    monkeypatch.setattr(train_cli, "fit", lambda config, callbacks, **kw: real_fit(
        config, [*callbacks, SendSignal()], **kw))
    return lambda: monkeypatch.setattr(train_cli, "fit", real_fit)


class StopAt(Callback):
    """Requests a stop once `step` steps are done (as the signal handler does)."""

    def __init__(self, step: int):
        self.step, self.done = step, 0

    def on_step(self, step: int) -> None:
        self.done = step

    def should_stop(self) -> bool:
        return self.done >= self.step


def folder_state(folder: Path) -> dict:
    """Every entry under `folder`: a regular file's bytes hashed, a link's target, anything else its type;
    equal before and after: nothing changed."""
    import hashlib

    state = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink():
            state[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            state[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        else:  # a folder, a FIFO, a device: never read
            state[str(path)] = ("node", os.lstat(path).st_mode)
    return state


# --- real signals in this process at the moments of a run's start-up -------------------------------------

def kill_self(signum=None, times: int = 1) -> None:
    """Send this process `signum` (default SIGINT) `times` times: the real handler, as Ctrl-C does."""
    import signal

    for _ in range(times):
        os.kill(os.getpid(), signal.SIGINT if signum is None else signum)


def during_data_loading(monkeypatch, times: int = 1) -> None:
    """A signal while the run's data are read (engine/run.py's `splits_for`)."""
    import alexnet_lab.engine.run as lifecycle

    real = lifecycle.splits_for
    monkeypatch.setattr(lifecycle, "splits_for", lambda *a, **k: (kill_self(times=times), real(*a, **k))[1])


def during_the_claim(monkeypatch) -> None:
    """A signal once the run folder exists and is locked (engine/run.py's `claim_run_dir`)."""
    from contextlib import contextmanager

    import alexnet_lab.engine.run as lifecycle

    real = lifecycle.claim_run_dir

    @contextmanager
    def claiming(*args, **kwargs):
        with real(*args, **kwargs) as out:
            kill_self()
            yield out

    monkeypatch.setattr(lifecycle, "claim_run_dir", claiming)
