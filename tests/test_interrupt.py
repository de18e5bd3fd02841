"""Ctrl-C and SIGTERM while `train` trains (cli/interrupt.py): a checkpoint at the next step boundary,
the resume command printed, exit 130/143; a second signal leaves at once, a third is the default
action. Signals during start-up are tests/test_signals.py's.

Tiny synthetic IDX files (tests/fakedata.py), CPU only, offline; real signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alexnet_lab.cli import main
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.schema import check_checkpoint
from alexnet_lab.engine.trainer import Callback
from runhelpers import SRC, assert_same_run, recipe_args, signal_at, train_args

pytestmark = pytest.mark.usefixtures("offline_cli")


def test_ctrl_c_then_resume_equals_uninterrupted(data_dir_512, tmp_path, monkeypatch, capsys):
    assert main(recipe_args(data_dir_512, tmp_path / "a")) == 0
    handler_before = signal.getsignal(signal.SIGINT)
    restore = signal_at(monkeypatch, 11, signal.SIGINT)
    out = tmp_path / "b"
    assert main(recipe_args(data_dir_512, out)) == 130
    err = capsys.readouterr().err
    assert "Received SIGINT" in err
    assert f"Interrupted at step 11; checkpoint saved in {out / 'checkpoint.pt'}; " \
           f"resume with: alexnet-lab train --resume {out}" in err
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is restored
    restore()
    assert main(["train", "--resume", str(out)]) == 0
    assert "Resuming" in capsys.readouterr().out
    assert_same_run(tmp_path / "a", out)


def test_sigterm_in_process_exits_143(data_dir_512, tmp_path, monkeypatch, capsys):
    signal_at(monkeypatch, 3, signal.SIGTERM)
    assert main(recipe_args(data_dir_512, tmp_path / "r")) == 143
    assert "Interrupted at step 3" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["run_state"]["step"] == 3


def test_sigterm_subprocess(data_dir_512, tmp_path):
    """A real process killed with SIGTERM mid-training: checkpoint, message, exit status 143."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC), "ALEXNET_LAB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = recipe_args(data_dir_512, out)
    args[args.index("--epochs") + 1] = "500"
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "alexnet_lab", *args], env=env, stderr=err,
                                stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not (out / "checkpoint.pt").exists():  # training is under way (epoch 1 saved)
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            proc.kill()
    stderr = (tmp_path / "stderr").read_text()
    assert rc == 143, stderr
    assert "Received SIGTERM" in stderr and "Traceback" not in stderr
    payload = load_checkpoint(out / "checkpoint.pt")
    check_checkpoint(payload, out / "checkpoint.pt", for_resume=True)
    step = payload["run_state"]["step"]
    assert f"Interrupted at step {step};" in stderr and f"--resume {out}" in stderr
    assert not list(out.glob(".*tmp"))


def test_ctrl_c_after_the_last_step_does_not_exit_0(data_dir, tmp_path, monkeypatch, capsys):
    """SIGINT during the final evaluation: the run finishes its save, then exits 130, saying so."""
    import alexnet_lab.engine.run as train_cli

    class SignalAfterLastStep(Callback):
        def on_step(self, step):
            if step == 2:  # the last step; the final evaluation and save follow
                os.kill(os.getpid(), signal.SIGINT)

    real_fit = train_cli.fit
    monkeypatch.setattr(train_cli, "fit", lambda config, callbacks, **kw: real_fit(
        config, [*callbacks, SignalAfterLastStep()], **kw))
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 130
    err = capsys.readouterr().err
    assert "Received SIGINT" in err
    assert err.strip().splitlines()[-1] == (f"alexnet-lab train: Stopped on SIGINT after the last step: the run "
                                            f"had finished, and its results and final checkpoint are in {out}/.")
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert load_checkpoint(out / "checkpoint.pt")["run_state"]["step"] == 2


# --- the second and third signal --------------------------------------------------------------------

def test_second_ctrl_c_exits_at_once(data_dir_512, tmp_path, monkeypatch, capsys):
    handlers_before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    signal_at(monkeypatch, 20, signal.SIGINT, signal.SIGINT)
    out = tmp_path / "r"
    assert main(recipe_args(data_dir_512, out)) == 130
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers_before
    err = capsys.readouterr().err
    assert f"Stopped at once on the second signal, without saving; the last checkpoint ({out / 'checkpoint.pt'}) " \
           f"is intact; resume with: alexnet-lab train --resume {out}" in err
    assert "Interrupted at step" not in err
    assert load_checkpoint(out / "checkpoint.pt")["run_state"]["step"] == 16  # epoch 1's, untouched
    assert not list(out.glob(".*tmp"))


def test_the_second_signal_restores_the_default_handlers():
    """So that a third Ctrl-C ends the process on the spot."""
    from alexnet_lab.cli.interrupt import GracefulInterrupt, ImmediateExit

    before = signal.getsignal(signal.SIGINT)
    with GracefulInterrupt(stream=open(os.devnull, "w")) as interrupt:
        interrupt._handle(signal.SIGINT, None)
        assert interrupt.should_stop() and signal.getsignal(signal.SIGINT) == interrupt._handle
        with pytest.raises(ImmediateExit):
            interrupt._handle(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL == signal.getsignal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) == before
