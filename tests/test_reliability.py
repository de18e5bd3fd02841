"""Runs that survive: bit-exact resume, Ctrl-C/SIGTERM, divergence, and clear errors on bad input.

All on tiny synthetic IDX files (tests/fakedata.py), CPU only, offline.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.engine.checkpoint import check_resumable, load_checkpoint
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.trainer import Callback, StopRequested, TrainingDiverged, fit
from alexnet_lab.models import registry
from alexnet_lab.engine.run_dir import RunWriter, read_metrics

SRC = Path(__file__).resolve().parents[1] / "src"
TIMING = {"elapsed_s"}  # the only fields of a metrics row that may differ between equal runs
TIMING_STATE = {"step_seconds", "wall_seconds", "time_to_target_s", "metrics"}


@pytest.fixture(autouse=True)
def offline_one_thread(monkeypatch):
    """No downloads; one intra-op thread (on a shared 2-core machine 2 threads run ~10x slower);
    curves written as empty files (matplotlib costs ~0.5 s a figure; plots are tested elsewhere)."""
    import alexnet_lab.cli.running as cli_train

    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    monkeypatch.setattr(cli_train, "plot_curves", lambda runs, paths, title: [Path(p).touch() for p in paths])
    with fakedata.one_thread():
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """512 train / 64 test images: 16 steps per epoch at batch 32 (log every 3 steps)."""
    return fakedata.make_dataset(tmp_path_factory.mktemp("fmnist"), n_train=512, n_test=64)


def tiny_relu_dropout(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),  # (B, 4*13*13)
                         nn.Dropout(0.5), nn.Linear(4 * 13 * 13, num_classes))


@pytest.fixture
def tiny_model(monkeypatch) -> str:
    """A registered model with dropout (so the resumed RNG matters) and ReLU (so a high lr diverges)."""
    spec = registry.ModelSpec("tiny-dropout", tiny_relu_dropout, 28, "test model")
    monkeypatch.setitem(registry._REGISTRY, "tiny-dropout", spec)
    return "tiny-dropout"


def config_for(data_dir, **changes):
    values = dict(model="lenet", epochs=2, batch_size=32, lr=0.1, momentum=0.9, schedule="onecycle",
                  augment=True, deterministic=True, device="cpu", data_dir=str(data_dir))
    return make_config("d2l", **{**values, **changes})


class StopAt(Callback):
    """Requests a stop once `step` steps are done (as the signal handler does)."""

    def __init__(self, step: int):
        self.step, self.done = step, 0

    def on_step(self, step: int) -> None:
        self.done = step

    def should_stop(self) -> bool:
        return self.done >= self.step


class CrashAt(Callback):
    """A hard crash (power cut, OOM kill) at a step: no checkpoint, no clean-up."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step: int) -> None:
        if step == self.step:
            raise RuntimeError("simulated crash")


def run_fit(config, out: Path, extra=(), resume=None):
    out.mkdir(exist_ok=True)
    rows = resume["run_state"]["metrics"] if resume is not None else None
    return fit(config, [RunWriter(out, config.to_dict(), rows=rows), *extra], resume=resume)


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


# --- bit-exact resume -------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_steps", [(5,), (16,), (7, 20)], ids=["mid-epoch", "epoch-end", "twice"])
def test_stop_and_resume_is_bit_exact(data_dir, tiny_model, tmp_path, stop_steps):
    config = config_for(data_dir, model=tiny_model)
    run_fit(config, tmp_path / "a")
    out = tmp_path / "b"
    for k in stop_steps:
        resume = load_checkpoint(out / "checkpoint.pt") if (out / "checkpoint.pt").exists() else None
        with pytest.raises(StopRequested) as stop:
            run_fit(config, out, [StopAt(k)], resume=resume)
        # step 16 ends epoch 1: the stop is honoured at the next step boundary
        assert stop.value.payload["run_state"]["step"] == (k if k != 16 else 17)
    resumed = load_checkpoint(out / "checkpoint.pt")
    run_fit(config, out, resume=resumed)
    assert_same_run(tmp_path / "a", out)


def test_crash_after_checkpoint_every_resumes_bit_exact(data_dir, tmp_path):
    config = config_for(data_dir, checkpoint_every=4)
    run_fit(config, tmp_path / "a")
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_fit(config, out, [CrashAt(23)])
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["run_state"]["step"] == 20  # --checkpoint-every 4: step 20 is the last before 23
    assert len(read_metrics(out)) > len(payload["run_state"]["metrics"])  # rows logged after it
    run_fit(config, out, resume=payload)
    assert_same_run(tmp_path / "a", out)


def test_the_resume_test_can_fail(data_dir, tmp_path):
    """Guard: a resume that is off by one batch gives different weights, and the check sees it."""
    config = config_for(data_dir)
    run_fit(config, tmp_path / "a")
    with pytest.raises(StopRequested):
        run_fit(config, tmp_path / "b", [StopAt(5)])
    payload = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    payload["run_state"]["batch"] += 1  # resume one batch off: the data order is wrong
    run_fit(config, tmp_path / "b", resume=payload)
    with pytest.raises(AssertionError):
        assert_same_run(tmp_path / "a", tmp_path / "b")


# --- the CLI: signals, resume flags ------------------------------------------------------------------

def train_args(data_dir, out, *extra):
    return ["train", "--model", "lenet", "--data-dir", str(data_dir), "--epochs", "2", "--batch-size", "32",
            "--lr", "0.1", "--momentum", "0.9", "--schedule", "onecycle", "--augment", "--deterministic",
            "--device", "cpu", "--limit-test", "64", "--out", str(out), *extra]


def signal_at(monkeypatch, step: int, *signums):
    """Make `train` send itself `signums` after step `step` (a real signal through the real handler)."""
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


def test_ctrl_c_then_resume_equals_uninterrupted(data_dir, tmp_path, monkeypatch, capsys):
    assert main(train_args(data_dir, tmp_path / "a")) == 0
    handler_before = signal.getsignal(signal.SIGINT)
    restore = signal_at(monkeypatch, 11, signal.SIGINT)
    out = tmp_path / "b"
    assert main(train_args(data_dir, out)) == 130
    err = capsys.readouterr().err
    assert "Received SIGINT" in err
    assert f"Interrupted at step 11; checkpoint saved in {out / 'checkpoint.pt'}; " \
           f"resume with: alexnet-lab train --resume {out}" in err
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is restored
    restore()
    assert main(["train", "--resume", str(out)]) == 0
    assert "Resuming" in capsys.readouterr().out
    assert_same_run(tmp_path / "a", out)


def test_sigterm_in_process_exits_143(data_dir, tmp_path, monkeypatch, capsys):
    signal_at(monkeypatch, 3, signal.SIGTERM)
    assert main(train_args(data_dir, tmp_path / "r")) == 143
    assert "Interrupted at step 3" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["run_state"]["step"] == 3


def test_second_ctrl_c_exits_at_once(data_dir, tmp_path, monkeypatch, capsys):
    handlers_before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    signal_at(monkeypatch, 20, signal.SIGINT, signal.SIGINT)
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 130
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers_before
    err = capsys.readouterr().err
    assert f"Stopped at once on the second signal, without saving; the last checkpoint ({out / 'checkpoint.pt'}) " \
           f"is intact; resume with: alexnet-lab train --resume {out}" in err
    assert "Interrupted at step" not in err
    assert load_checkpoint(out / "checkpoint.pt")["run_state"]["step"] == 16  # epoch 1's, untouched
    assert not list(out.glob(".*tmp"))


def test_sigterm_subprocess(data_dir, tmp_path):
    """A real process killed with SIGTERM mid-training: checkpoint, message, exit status 143."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC), "ALEXNET_LAB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = train_args(data_dir, out)
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
    check_resumable(payload, out / "checkpoint.pt")
    step = payload["run_state"]["step"]
    assert f"Interrupted at step {step};" in stderr and f"--resume {out}" in stderr
    assert not list(out.glob(".*tmp"))


def test_resume_appends_when_extending_epochs(data_dir, tmp_path, capsys):
    constant = ["--schedule", "constant"]  # a one-cycle schedule would change with the length
    assert main(train_args(data_dir, tmp_path / "a", *constant)) == 0
    args = train_args(data_dir, tmp_path / "b", *constant)
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    one_epoch = read_metrics(tmp_path / "b")
    assert main(["train", "--resume", str(tmp_path / "b")]) == 2
    assert "already finished its 1 epoch(s)" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "b"), "--epochs", "2"]) == 0
    assert read_metrics(tmp_path / "b")[:len(one_epoch)] == one_epoch
    assert json.loads((tmp_path / "b" / "config.json").read_text())["epochs"] == 2
    assert_same_run(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("extra, message", [
    (["--lr", "0.5"], "--lr cannot change when resuming"),
    (["--preset", "d2l"], "--preset cannot change when resuming"),
    (["--epochs", "0.5"], "--epochs may only grow"),
    (["--out", "elsewhere"], "--out cannot be combined with --resume"),
])
def test_resume_refuses_recipe_changes(data_dir, tmp_path, monkeypatch, capsys, extra, message):
    signal_at(monkeypatch, 3, signal.SIGINT)
    assert main(train_args(data_dir, tmp_path / "r")) == 130
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_resume_errors_name_the_file(data_dir, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 2
    assert "holds no checkpoint.pt to resume from" in capsys.readouterr().err
    signal_at(monkeypatch, 3, signal.SIGINT)
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 130
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:5000])  # truncated (a copy cut short)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"Checkpoint '{path}' is truncated or corrupt" in err and "Traceback" not in err


# --- numerical failure -------------------------------------------------------------------------------

class PoisonAt(Callback):
    """Makes the weights NaN after `step` (as a too-high learning rate eventually does)."""

    def __init__(self, model_holder: list, step: int):
        self.holder, self.step = model_holder, step

    def on_step(self, step):
        if step == self.step:
            with torch.no_grad():
                for p in self.holder[0].parameters():
                    p.fill_(float("nan"))


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    import alexnet_lab.engine.step as step

    models = []
    real_prepare = step.prepare_model
    monkeypatch.setattr(step, "prepare_model", lambda *a, **k: models.append(real_prepare(*a, **k)) or models[-1])
    out = tmp_path / "r"
    # 4 epochs of 16 steps: log points every 3rd batch of an epoch (64 steps / 20 points = 3). Step 20
    # is no log point, so the NaN weights are first seen by the --checkpoint-every save at step 20,
    # which must refuse to write them.
    with pytest.raises(TrainingDiverged, match=r"non-finite \(NaN or inf\) by step 20 \(epoch 2\).*lower --lr"):
        run_fit(config_for(data_dir, checkpoint_every=1, epochs=4), out, [PoisonAt(models, 20)])
    kept = load_checkpoint(out / "checkpoint.pt")
    assert kept["run_state"]["step"] == 19  # step 19, a log point, is saved by --checkpoint-every too
    assert all(torch.isfinite(v).all() for v in kept["model_state"].values())


def test_too_high_lr_is_a_clear_error(data_dir, tmp_path, capsys):
    args = train_args(data_dir, tmp_path / "r", "--lr", "100", "--schedule", "constant")
    args[args.index("lenet")] = "lenet-modern"  # ReLU and max pooling: diverges at lr 100
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "The training loss became non-finite (NaN or inf) by step" in err and "lower --lr" in err
    assert "Traceback" not in err


# --- bad data and bad input: one paragraph, exit 2, nothing left behind -------------------------------

def corrupt(kind: str, folder: Path) -> None:
    arrays = fakedata.make_arrays(64, 32)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    if kind == "missing":
        labels.unlink()
    elif kind == "truncated-gz":
        labels.write_bytes(labels.read_bytes()[:-12])
    elif kind == "truncated-idx":
        raw = fakedata.idx_bytes(arrays["test_images"])
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    elif kind == "wrong-magic":
        raw = bytearray(fakedata.idx_bytes(arrays["test_labels"]))
        raw[0] = 0x1F
        labels.write_bytes(gzip.compress(bytes(raw)))
    elif kind == "count-mismatch":
        fakedata.write_idx(labels, arrays["test_labels"][:-1])
    elif kind == "label-out-of-range":
        bad = arrays["test_labels"].copy()
        bad[5] = 10
        fakedata.write_idx(labels, bad)


@pytest.mark.parametrize("kind, message", [
    ("missing", "lacks t10k-labels-idx1-ubyte(.gz)"),
    ("truncated-gz", "is a damaged or truncated gzip file"),
    ("truncated-idx", "is truncated: header shape (32, 28, 28) needs 25104 bytes, file has 25004"),
    ("wrong-magic", "has the wrong magic number 0x1f000801"),
    ("count-mismatch", "has 32 images but"),
    ("label-out-of-range", "has label 10, outside 0..9"),
])
def test_bad_data_is_a_clear_error(tmp_path, capsys, kind, message):
    folder = fakedata.make_dataset(tmp_path / "data", n_train=64, n_test=32)
    corrupt(kind, folder)
    out = tmp_path / "run"
    assert main(train_args(folder, out)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("alexnet-lab train: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_bad_data_error_in_a_real_process(tmp_path):
    """What a shell user sees: one line on stderr, exit status 2, no traceback, no run folder."""
    folder = fakedata.make_dataset(tmp_path / "data", n_train=64, n_test=32)
    corrupt("label-out-of-range", folder)
    env = {**os.environ, "PYTHONPATH": str(SRC), "ALEXNET_LAB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "alexnet_lab", *train_args(folder, tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"alexnet-lab train: error: '{folder / 't10k-labels-idx1-ubyte.gz'}' has label 10, "
                           "outside 0..9. The file is corrupt; replace it with the official one.\n")
    assert not (tmp_path / "run").exists()


def test_download_checksum_mismatch_removes_the_partial_file(tmp_path, monkeypatch, capsys):
    mirror = fakedata.make_dataset(tmp_path / "mirror", n_train=64, n_test=32)  # not the real content
    monkeypatch.delenv("ALEXNET_LAB_OFFLINE")
    monkeypatch.setenv("ALEXNET_LAB_MIRROR", mirror.as_uri())
    target = tmp_path / "download"
    assert main(train_args(target, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "Checksum mismatch for file://" in err and "The partial file was removed" in err
    assert list(target.iterdir()) == []
    assert not (tmp_path / "run").exists()


def test_unwritable_out(data_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(train_args(data_dir, blocker / "run")) == 2
    err = capsys.readouterr().err
    assert f"Cannot write to --out '{blocker / 'run'}': Not a directory" in err


def test_full_disk_while_saving(data_dir, tmp_path, monkeypatch, capsys):
    """The epoch-2 save meets a full disk inside torch.save (which reports it as a RuntimeError from
    its zip writer): the documented message, exit 2, epoch 1's checkpoint intact, no temp file."""
    monkeypatch.setattr(os, "fdopen", fakedata.FullDisk(files_ok=5))  # metrics.jsonl/.csv, config.json, epoch 1: checkpoint.pt, best.pt
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"alexnet-lab train: error: Saving checkpoint '{out / 'checkpoint.pt'}' failed: "
                                    "No space left on device. Free disk space or choose another --out; the "
                                    "previous checkpoint is intact."), err
    assert "Traceback" not in err
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.pt")["run_state"]["step"] == 16
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "argument --epochs: must be positive, got -1.0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["--preset", "fastest"], "argument --preset: invalid choice: 'fastest'"),
    (["--lr", "abc"], "argument --lr: expected a number, got 'abc'"),
])
def test_impossible_flags(data_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(train_args(data_dir, tmp_path / "r") + flags)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_resize_too_small_names_the_smallest_size(data_dir, tmp_path, capsys):
    args = train_args(data_dir, tmp_path / "r", "--resize", "32")
    args[args.index("lenet")] = "alexnet"
    assert main(args) == 2
    err = capsys.readouterr().err
    # Independent reference, by hand: conv 11/4 pad 1, then three 3/2 max-pools (the 5x5 and 3x3 convs
    # keep the size); the last pool must leave 5x5 for Linear(6400).
    def side_after_features(s):
        s = (s + 2 - 11) // 4 + 1
        for _ in range(3):
            s = (s - 3) // 2 + 1
        return s
    smallest = next(s for s in range(8, 513) if side_after_features(s) == 5)
    assert smallest == 193
    assert "does not fit model 'alexnet'" in err and f"The smallest size that works is {smallest}." in err
    assert not (tmp_path / "r").exists()


# --- predict: bad image files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lenet_checkpoint(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    config = make_config("d2l", model="lenet", epochs=1, batch_size=64, device="cpu", data_dir=str(data_dir))
    with fakedata.one_thread():
        fit(config, [RunWriter(out, config.to_dict())])
    return out / "checkpoint.pt"


def test_predict_refuses_bad_images(lenet_checkpoint, tmp_path, capsys):
    from PIL import Image

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb)  # 64 M pixels in a few kB: a decompression bomb
    good = tmp_path / "good.png"
    Image.new("L", (40, 30), 200).save(good)
    cut = tmp_path / "cut.png"
    Image.new("L", (300, 300)).save(cut)
    cut.write_bytes(cut.read_bytes()[:60])
    for path, message in [(text, "is not an image PIL can read"),
                          (bomb, "is too large (over 40,000,000 pixels; refused as a possible decompression bomb)"),
                          (cut, "is damaged or unreadable")]:
        assert main(["predict", "--checkpoint", str(lenet_checkpoint), "--device", "cpu", str(good), str(path)]) == 2
        err = capsys.readouterr().err
        assert f"'{path}'" in err and message in err and "Traceback" not in err
    assert main(["predict", "--checkpoint", str(lenet_checkpoint), "--device", "cpu", str(good)]) == 0
    assert str(good) in capsys.readouterr().out


def test_malicious_checkpoint_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # unpickling this creates `marker`

    evil = tmp_path / "checkpoint.pt"
    torch.save({"format": "alexnet-lab-checkpoint/1", "model_state": Payload()}, evil)
    for argv in (["evaluate", "--checkpoint", str(evil)], ["predict", "--checkpoint", str(evil), str(evil)],
                 ["train", "--resume", str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        if argv[0] != "predict":  # predict reads the images first (this one is not an image)
            assert f"Refused to load '{evil}': the file contains Python code" in err
        assert not marker.exists()
    # Guard: the file really carries code; an unsafe load would have run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_checkpoint_of_another_model(lenet_checkpoint, tmp_path, capsys):
    from alexnet_lab.engine.checkpoint import save_checkpoint

    payload = load_checkpoint(lenet_checkpoint)
    payload["model_name"] = "alexnet"
    wrong = save_checkpoint(tmp_path / "wrong.pt", payload)
    assert main(["evaluate", "--checkpoint", str(wrong), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"Checkpoint '{wrong}' does not match model 'alexnet' (missing 6.weight" in err


def test_full_disk_while_plotting(data_dir, tmp_path, monkeypatch, capsys):
    """matplotlib meets a full disk halfway through curves.svg: the message names the file, and no
    torn figure or temp file is left (figures are written atomically too)."""
    import matplotlib.figure

    import alexnet_lab.cli.running as cli_train
    import alexnet_lab.reports.plots as plots

    def half_then_full(self, target, **kwargs):
        data = b"<svg partial"
        if hasattr(target, "write"):
            target.write(data)
        else:
            Path(target).write_bytes(data)
        raise OSError(28, "No space left on device")  # the kernel's error names no file

    monkeypatch.setattr(cli_train, "plot_curves", plots.plot_curves)  # undo the fixture's stub
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_full)
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 2
    err = capsys.readouterr().err
    assert f"error: Cannot write '{out / 'curves.svg'}': No space left on device. Free disk space" in err
    assert "Traceback" not in err
    assert not (out / "curves.svg").exists() and not list(out.glob(".*.tmp"))


def test_full_disk_while_downloading(tmp_path, monkeypatch, capsys):
    mirror = fakedata.make_dataset(tmp_path / "mirror", n_train=64, n_test=32)
    monkeypatch.delenv("ALEXNET_LAB_OFFLINE")
    monkeypatch.setenv("ALEXNET_LAB_MIRROR", mirror.as_uri())
    monkeypatch.setattr(os, "fdopen", fakedata.FullDisk(files_ok=0))
    target = tmp_path / "download"
    assert main(train_args(target, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert f"error: Writing '{target / 'train-images-idx3-ubyte.gz'}' failed while downloading it: No space " \
           "left on device. The partial file was removed" in err
    assert list(target.iterdir()) == [] and not (tmp_path / "run").exists()


def test_best_pt_is_written_at_each_new_best_with_a_target(data_dir, tmp_path):
    """With --target-accuracy every log point evaluates, and each new best test accuracy is saved."""
    saves = []

    class Saves(Callback):
        def on_checkpoint(self, payload, is_best):
            saves.append((payload["run_state"]["step"], is_best))

    config = config_for(data_dir, epochs=1, target_accuracy=1.0, augment=False)  # 1.0: never reached
    run_fit(config, tmp_path / "r", [Saves()])
    tested = [r for r in read_metrics(tmp_path / "r") if "test_acc" in r]
    assert len(tested) == 6  # every 3rd of 16 steps, and the epoch end
    best, expected = -1.0, []
    for row in tested:
        if row["test_acc"] > best:
            best = row["test_acc"]
            expected.append((row["step"], True))
    assert [s for s in saves if s[1]] == expected
    assert saves[-1][0] == 16  # and the epoch end, best or not
    assert load_checkpoint(tmp_path / "r" / "best.pt")["run_state"]["step"] == expected[-1][0]
