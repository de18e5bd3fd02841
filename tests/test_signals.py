"""Ctrl-C and SIGTERM at every moment of `train`'s start-up: exit 130/143, no traceback, and no
half-made run folder (none at all, or one holding a checkpoint that resumes).

Real signals: to real `python -m alexnet_lab` processes at spread-out times (most land while torch
and the commands are imported), and, in-process, at each step after the imports (loading the data,
claiming the folder, writing its first files, setting up training). Tiny synthetic data, one thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fakedata
from runhelpers import during_data_loading, during_the_claim, kill_self
from alexnet_lab.cli import main, signals
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.schema import check_checkpoint
from alexnet_lab.engine.trainer import Callback

SRC = Path(__file__).resolve().parents[1] / "src"
# 12 moments from 0.05 s to 2.5 s after main() starts, closer together early on, where torch and the
# commands are being imported (3-5 s of CPU on a loaded 2-core machine, about 1 s on a fast one); two
# of them send SIGTERM instead of SIGINT. Each costs a process that imports torch: 12 in all.
OFFSETS_S = [round(0.05 * (2.5 / 0.05) ** (i / 11), 3) for i in range(12)]
MOMENTS = [(delay, signal.SIGTERM if i in (4, 9) else signal.SIGINT) for i, delay in enumerate(OFFSETS_S)]
SAMPLED = (3, 9)  # what a plain `make test` runs: a SIGINT during the imports, a SIGTERM after them (tests/suite.py)


def train_args(data_dir, out, epochs="1"):
    return ["train", "--model", "lenet", "--data-dir", str(data_dir), "--epochs", epochs, "--batch-size", "32",
            "--device", "cpu", "--no-report", "--out", str(out)]


def assert_no_half_made_run(out: Path) -> None:
    """`out` does not exist, or it holds a checkpoint a resume accepts (and no lock or temp file)."""
    if not out.exists():
        return
    names = sorted(p.name for p in out.iterdir())
    assert "checkpoint.pt" in names, f"a half-made run folder: {names}"
    check_checkpoint(load_checkpoint(out / "checkpoint.pt"), out / "checkpoint.pt", for_resume=True)
    assert not [n for n in names if n.startswith(".")], names


def default_sigint() -> None:
    """A process started with SIGINT ignored (a shell's `&`) keeps it ignored, as Python does; the
    tests want the usual terminal case, whatever the shell that started pytest."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_main(pid: int, timeout_s: float = 30.0) -> None:
    """Until main() has installed its handler: the promise starts at main's first line, not during the
    interpreter's own start-up (tens of ms, before any alexnet-lab code runs). Python itself catches
    SIGINT but not SIGTERM, so SIGTERM in the process's caught-signals mask marks the moment (Linux)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        caught = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "0")
        if int(caught, 16) >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.002)
    raise AssertionError("main() never installed its signal handler")


def signal_after(data_dir, out: Path, delay_s: float, signum: int) -> subprocess.CompletedProcess:
    """Start `python -m alexnet_lab train` (a long run), send `signum` after `delay_s`, wait for the end."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "ALEXNET_LAB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alexnet_lab", *train_args(data_dir, out, epochs="1000")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        wait_for_main(proc.pid)
        time.sleep(delay_s)
        assert proc.poll() is None, "the run ended before the signal"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("delay_s,signum", [
    pytest.param(delay, signum, id=f"{signum.name}-{delay}s", marks=() if i in SAMPLED else pytest.mark.thorough)
    for i, (delay, signum) in enumerate(MOMENTS)])
def test_a_signal_at_any_moment_of_start_up_exits_130_or_143_without_a_half_made_run(data_dir, tmp_path,
                                                                                      delay_s, signum):
    out = tmp_path / "runs" / "r"  # its parent is made too, and must go with it
    result = signal_after(data_dir, out, delay_s, signum)
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert_no_half_made_run(out)
    if not out.exists():
        assert not out.parent.exists()


def test_ctrl_c_during_start_up_imports_exits_130_without_a_traceback(data_dir, tmp_path):
    """A real SIGINT delivered while `python -m alexnet_lab` imports torch."""
    hook = ("import builtins, os, runpy, signal, sys\n"
            "real_import = builtins.__import__\n"
            "def importing(name, *args, **kwargs):\n"
            "    if name == 'torch' and 'torch' not in sys.modules:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real_import(name, *args, **kwargs)\n"
            "builtins.__import__ = importing\n"
            "runpy.run_module('alexnet_lab', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "ALEXNET_LAB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", hook, *train_args(data_dir, tmp_path / "r")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "alexnet-lab: interrupted.\n"
    assert not (tmp_path / "r").exists()


# --- in-process: a real signal at each step after the imports -----------------------------------------

@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # see default_sigint
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with fakedata.one_thread():
            yield
    finally:
        signal.signal(signal.SIGINT, previous)


def during_training_set_up(monkeypatch):
    """In fit, after the model is built and config.json written, before the first step."""
    import alexnet_lab.engine.run as train_cli

    class AtStart(Callback):
        def on_train_start(self, info):
            kill_self()

    real = train_cli.fit
    monkeypatch.setattr(train_cli, "fit", lambda config, callbacks, **kw: real(config, [*callbacks, AtStart()], **kw))


def test_ctrl_c_while_loading_data_leaves_no_folder(data_dir, tmp_path, monkeypatch, capsys, offline):
    during_data_loading(monkeypatch)
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 130
    err = capsys.readouterr().err
    assert "Received SIGINT: stopping before training starts" in err
    assert err.strip().splitlines()[-1] == (
        "alexnet-lab train: Stopped by SIGINT before training started; nothing was written.")
    assert not out.exists()


def test_ctrl_c_while_claiming_the_folder_removes_it_and_the_parents_it_made(data_dir, tmp_path, monkeypatch,
                                                                               capsys, offline):
    during_the_claim(monkeypatch)
    out = tmp_path / "a" / "b" / "r"
    assert main(train_args(data_dir, out)) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "alexnet-lab train: Stopped by SIGINT before training started; nothing was written.")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_early_stop_keeps_a_folder_that_was_there_before(data_dir, tmp_path, monkeypatch, offline):
    """An empty folder prepared by someone (allowed as --out) stays, and so does all beside it."""
    during_the_claim(monkeypatch)
    out = tmp_path / "prepared"
    out.mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    assert main(train_args(data_dir, out)) == 130
    assert out.is_dir() and list(out.iterdir()) == []
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_ctrl_c_while_training_is_set_up_saves_a_checkpoint_that_resumes(data_dir, tmp_path, monkeypatch,
                                                                         capsys, offline):
    during_training_set_up(monkeypatch)
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 130
    assert "Interrupted at step 1; checkpoint saved" in capsys.readouterr().err
    assert_no_half_made_run(out)
    monkeypatch.undo()
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    assert main(["train", "--resume", str(out)]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["run_state"]["step"] == 2


def test_a_second_ctrl_c_before_the_first_checkpoint_leaves_no_folder(data_dir, tmp_path, monkeypatch, capsys,
                                                                       offline):
    import alexnet_lab.engine.run as train_cli

    class Twice(Callback):
        def on_train_start(self, info):
            kill_self(times=2)  # the second one stops at once, before any checkpoint

    real = train_cli.fit
    monkeypatch.setattr(train_cli, "fit", lambda config, callbacks, **kw: real(config, [*callbacks, Twice()], **kw))
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 130
    assert "Stopped at once on the second signal, without saving; no checkpoint had been written yet" in \
        capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_before_a_resume_starts_touches_nothing(data_dir, tmp_path, monkeypatch, capsys, offline):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}  # tensorboard/ too
    during_data_loading(monkeypatch)
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "alexnet-lab train: Stopped by SIGINT before training started; nothing was written.")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_second_ctrl_c_during_start_up_quits_at_once(data_dir, tmp_path, monkeypatch, capsys, offline):
    import alexnet_lab.engine.run as train_cli

    handlers = [signal.getsignal(s) for s in signals.SIGNALS]
    during_data_loading(monkeypatch, times=2)
    reached = []
    monkeypatch.setattr(train_cli, "preflight", lambda *a, **k: reached.append(a))
    assert main(train_args(data_dir, tmp_path / "r")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "alexnet-lab train: Stopped at once on the second signal, without saving; no checkpoint had been "
        "written yet, so there is nothing to resume")
    assert len(reached) == 1  # stopped inside the data loading, before the preflight after it
    assert not (tmp_path / "r").exists()
    assert [signal.getsignal(s) for s in signals.SIGNALS] == handlers  # restored


def test_sigterm_while_loading_data_exits_143(data_dir, tmp_path, monkeypatch, capsys, offline):
    import alexnet_lab.engine.run as train_cli

    real = train_cli.splits_for
    monkeypatch.setattr(train_cli, "splits_for",
                        lambda *a, **k: (kill_self(signal.SIGTERM), real(*a, **k))[1])
    assert main(train_args(data_dir, tmp_path / "r")) == 143
    assert "Stopped by SIGTERM before training started; nothing was written." in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_ctrl_c_while_loading_data_exits_130(data_dir, tmp_path, monkeypatch, capsys, offline):
    import alexnet_lab.engine.run as train_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "splits_for", interrupted)  # what train loads the data with
    assert main(train_args(data_dir, tmp_path / "r")) == 130
    assert capsys.readouterr().err == "alexnet-lab train: interrupted.\n"
    assert not (tmp_path / "r").exists()


def test_the_start_up_handler_records_and_restores(offline):
    before = [signal.getsignal(s) for s in signals.SIGNALS]
    with signals.StartupSignals(stream=open(os.devnull, "w")) as startup:
        kill_self()
        assert startup.signum == signal.SIGINT and signals.pending() == signal.SIGINT  # recorded, not raised
        with pytest.raises(signals.Interrupted, match="stopped by SIGINT while testing"):
            signals.check("while testing")
        with pytest.raises(signals.ImmediateExit):
            kill_self()  # the second one: at once
        assert [signal.getsignal(s) for s in signals.SIGNALS] == [signal.SIG_DFL] * 2  # a third kills
    assert [signal.getsignal(s) for s in signals.SIGNALS] == before and signals.pending() is None


def test_a_signal_ignored_at_start_stays_ignored(monkeypatch):
    """`nohup` or a shell's `&` start a program with SIGINT ignored; it must stay so."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.StartupSignals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)
