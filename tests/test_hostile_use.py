"""The defects found by using the CLI as a hostile or careless user would (issue 9), one test each.

Tiny synthetic data (tests/fakedata.py), CPU only, offline; each test failed before its fix.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.trainer import Callback

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def offline_one_thread(monkeypatch):
    """No downloads; one intra-op thread; curves as empty files (figures are tested elsewhere)."""
    import alexnet_lab.cli.running as cli_train

    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    monkeypatch.setattr(cli_train, "plot_curves", lambda runs, paths, title: [Path(p).touch() for p in paths])
    with fakedata.one_thread():
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """64 train / 32 test images: 2 steps per epoch at batch 32."""
    return fakedata.make_dataset(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=32)


def train_args(data_dir, out, *extra):
    return ["train", "--model", "lenet", "--data-dir", str(data_dir), "--epochs", "1", "--batch-size", "32",
            "--device", "cpu", "--out", str(out), *extra]


def last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# --- 1. one run folder, one process ------------------------------------------------------------------

def test_a_locked_run_folder_is_refused_naming_the_holder(data_dir, tmp_path, capsys):
    from alexnet_lab.engine.run_dir import LOCK_NAME, RunDirLock

    out = tmp_path / "run"
    out.mkdir()
    holder = RunDirLock(out).acquire()  # another open file: flock conflicts as with another process
    try:
        assert main(train_args(data_dir, out)) == 2
        assert f"'{out}' is in use by another alexnet-lab process (PID {os.getpid()})" in last_line(capsys)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.release()
    assert main(train_args(data_dir, out)) == 0
    assert not (out / LOCK_NAME).exists()  # released (and removed) at the end of the run
    holder = RunDirLock(out).acquire()
    try:  # a second --resume of the same folder is refused the same way
        assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
        assert f"(PID {os.getpid()})" in last_line(capsys)
    finally:
        holder.release()


def test_a_stale_lock_of_a_dead_process_does_not_block(data_dir, tmp_path, capsys):
    """Another process (plain Python, no torch) holds the folder's lock, then dies by SIGKILL."""
    LOCK_NAME = ".lock"  # noqa: N806  (engine/run_dir.py's lock file)
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                             f"fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
                             "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
                             "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"locked\n"
    assert main(train_args(data_dir, out)) == 2  # held by a live process
    assert f"is in use by another alexnet-lab process (PID {proc.pid})" in last_line(capsys)
    proc.kill()  # SIGKILL: no clean-up; the lock file stays, holding a dead PID
    proc.wait()
    assert (out / LOCK_NAME).read_text() == str(proc.pid)
    assert main(train_args(data_dir, out)) == 0
    assert not (out / LOCK_NAME).exists()  # taken over, then released and removed


# --- 2. --out never overwrites a folder that is not this run's --------------------------------------

def test_out_refuses_a_non_empty_folder_without_a_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "best.pt").write_bytes(b"someone's best model")
    (out / "summary.json").write_text('{"test_acc": 0.94}')
    assert main(train_args(data_dir, out)) == 2
    err = last_line(capsys)
    assert f"'{out}' is not empty (it holds best.pt, summary.json)" in err and "Choose a new or empty --out" in err
    assert (out / "best.pt").read_bytes() == b"someone's best model"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "summary.json"]


# --- 3. --resume on other data ----------------------------------------------------------------------

def test_resume_on_different_data_is_refused_unless_allowed(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data_dir, out, "--schedule", "onecycle")) == 0
    fingerprint = load_checkpoint(out / "checkpoint.pt")["data_fingerprint"]
    assert fingerprint["train"]["examples"] == 64 and fingerprint["test"]["examples"] == 32
    copy = tmp_path / "copy"  # the same files elsewhere: allowed, as are --device and --checkpoint-every
    shutil.copytree(data_dir, copy)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2", "--data-dir", str(copy), "--device", "cpu",
                 "--checkpoint-every", "1"]) == 0
    assert "Note: the onecycle learning-rate schedule now spans 2 epochs" in capsys.readouterr().out
    smaller = fakedata.make_dataset(tmp_path / "smaller", n_train=32, n_test=32)
    assert main(["train", "--resume", str(out), "--epochs", "3", "--data-dir", str(smaller)]) == 2
    err = last_line(capsys)
    assert f"The data differ from those the run in '{out}' was trained on (training set: 64 images" in err
    assert "32 (" in err and "--allow-data-change" in err
    assert load_checkpoint(out / "checkpoint.pt")["run_state"]["step"] == 4  # untouched
    assert main(["train", "--resume", str(out), "--epochs", "8", "--data-dir", str(smaller),
                 "--allow-data-change"]) == 0
    assert "--allow-data-change: the data differ" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.pt")["data_fingerprint"]["train"]["examples"] == 32


def test_the_fingerprint_sees_one_changed_pixel(tmp_path):
    from alexnet_lab.data.fingerprint import data_fingerprint, describe_difference

    arrays = fakedata.make_arrays(16, 8)
    tensors = [torch.from_numpy(arrays[k].astype(np.int64) if "labels" in k else arrays[k])
               for k in ("train_images", "train_labels", "test_images", "test_labels")]
    before = data_fingerprint(*tensors)
    tensors[2] = tensors[2].clone()
    tensors[2][3, 10, 10] ^= 1
    after = data_fingerprint(*tensors)
    assert before["train"] == after["train"] and before["test"] != after["test"]
    assert describe_difference(before, after).startswith("test set: 8 images")
    assert describe_difference(before, data_fingerprint(*[t.clone() for t in tensors[:2]], *tensors[2:])) \
        == describe_difference(before, after)


# --- 6. numbers out of range; memory ----------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--epochs", "inf"], "--epochs must be a finite number, got inf"),
    (["--epochs", "1e20"], "--epochs must be in (0, 100000], got 1e+20"),
    (["--lr", "1e308"], "--lr must be in (0, 10000], got 1e+308"),
    (["--weight-decay", "1e308"], "--weight-decay must be in [0, 10000], got 1e+308"),
    (["--weight-decay", "-1"], "--weight-decay must be in [0, 10000], got -1"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    (["--seed", "99999999999999999999"], "--seed must be in [0, 4294967295], got 99999999999999999999"),
    (["--resize", "5000"], "--resize must be in [1, 4096], got 5000"),
    (["--momentum", "1"], "--momentum must be in [0, 1), got 1"),
])
def test_out_of_range_numbers_are_refused(data_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out, *flags)) == 2
    err = capsys.readouterr().err
    assert err == f"alexnet-lab train: error: Invalid configuration: {message}.\n"
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["train", "--resize", "99999999999999999999"],
    ["summary", "--model", "lenet", "--input-size", "99999999999999999999"],
    ["profile", "--model", "lenet", "--batch-size", "99999999999999999999"],
])
def test_sizes_beyond_int32_are_refused_by_the_parser(tmp_path, capsys, argv):
    """They used to reach torch and end in a C++ traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "must be at most 2147483647, got 99999999999999999999" in capsys.readouterr().err


def test_resume_with_infinite_epochs_is_refused(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 0
    assert main(["train", "--resume", str(out), "--epochs", "inf"]) == 2
    assert last_line(capsys).endswith("--epochs must be a finite number, got inf.")


def test_the_largest_seed_trains_with_augmentation(data_dir, tmp_path):
    """Derived per-batch seeds overflowed 64 bits for seeds above ~2.8e7 with --augment."""
    assert main(train_args(data_dir, tmp_path / "r", "--seed", str(2**32 - 1), "--augment")) == 0


def test_activation_estimate_matches_a_hand_count():
    from alexnet_lab.engine.preflight import training_bytes

    # LeNet at 28x28, per image, every layer's output (independent count from the architecture):
    # conv 6x28x28, sigmoid, avgpool 6x14x14, conv 16x10x10, sigmoid, avgpool 16x5x5, flatten 400,
    # linear 120, sigmoid, linear 84, sigmoid, linear 10; plus the 28x28 input.
    per_image = 784 + 2 * 4704 + 1176 + 2 * 1600 + 400 + 400 + 2 * 120 + 2 * 84 + 10
    params = 61_706
    got = training_bytes("lenet", 28, batch=8)
    assert got["activations"] == 8 * per_image * 4
    assert got["state"] == params * 4 * 3
    assert training_bytes("lenet", 28, batch=8, precision="bf16")["activations"] == 8 * per_image * 2


def test_a_run_too_big_for_memory_is_refused_before_allocating(data_dir, tmp_path, monkeypatch, capsys):
    import alexnet_lab.engine.preflight as preflight

    # A machine with 16 MiB free (small sizes, so that a regression trains quickly instead of
    # exhausting this machine's memory, as fmnist-net at --resize 2048 would).
    monkeypatch.setattr(preflight, "available_bytes", lambda device: 16 * 2**20)
    out = tmp_path / "r"
    args = train_args(data_dir, out, "--resize", "64")
    args[args.index("lenet")] = "fmnist-net"
    assert main(args) == 2
    err = last_line(capsys)
    assert "Training fmnist-net at 64x64 with batch 32 needs about" in err
    assert "but only 16.0 MiB is available. Use a smaller --resize or --batch-size." in err
    assert not out.exists()


# --- 7. empty data ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n_train, n_test, split", [(0, 32, "training"), (64, 0, "test")])
def test_empty_data_is_a_clear_error(tmp_path, capsys, n_train, n_test, split):
    folder = fakedata.make_dataset(tmp_path / "data", n_train=n_train, n_test=n_test)
    out = tmp_path / "r"
    assert main(train_args(folder, out)) == 2
    assert last_line(capsys) == (f"alexnet-lab train: error: The {split} set in '{folder}' holds no images: a "
                                 "run needs at least one training and one test image. Point --data-dir at a "
                                 "complete data set.")
    assert not out.exists()


def test_evaluate_writes_valid_json_and_refuses_an_empty_test_set(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 0
    # 3 test images leave most classes without an example: their accuracy is null, never NaN.
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-dir", str(data_dir),
                 "--device", "cpu", "--limit-test", "3"]) == 0
    text = (out / "evaluation.json").read_text()
    result = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in evaluation.json"))
    assert None in result["per_class_acc"].values() and result["examples"] == 3
    empty = fakedata.make_dataset(tmp_path / "empty", n_train=64, n_test=0)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-dir", str(empty), "--device", "cpu",
                 "--out", str(tmp_path / "e")]) == 2
    assert "The test set in" in last_line(capsys) and not (tmp_path / "e").exists()


# --- 8. compare, --out at a file, predict --top -----------------------------------------------------

@pytest.mark.parametrize("name, content, message", [
    ("config.json", "{not json", "is unreadable or not valid JSON"),
    ("summary.json", "[1, 2]", "holds a JSON list, not the object alexnet-lab writes"),
])
def test_compare_names_a_broken_file(tmp_path, capsys, name, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "lenet"}')
    (run / name).write_text(content)
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 2
    assert f"'{run / name}' {message}" in last_line(capsys)


def test_out_pointing_at_a_file_is_a_clear_error(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(data_dir, run)) == 0
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for argv in (["evaluate", "--checkpoint", str(run / "best.pt"), "--data-dir", str(data_dir), "--device", "cpu",
                  "--out", str(a_file)],
                 ["compare", str(run), "--out", str(a_file)],
                 ["profile", "--model", "lenet", "--batch-size", "2", "--plot", str(a_file / "p.png")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = last_line(capsys)
        assert f"'{a_file}' as a folder: a file of that name exists. Choose a writable folder." in err, err


@pytest.mark.parametrize("top", ["-1", "0"])
def test_predict_top_must_be_positive(tmp_path, capsys, top):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--checkpoint", str(tmp_path / "c.pt"), "--top", top, str(tmp_path / "x.png")])
    assert exit_.value.code == 2
    assert f"argument --top: must be at least 1, got {top}" in capsys.readouterr().err


# --- 10. weight decay divergence --------------------------------------------------------------------

def test_weight_decay_divergence_is_blamed_on_weight_decay(data_dir, tmp_path, capsys):
    # lr x weight decay = 1000: each step multiplies the weights by -999.
    args = train_args(data_dir, tmp_path / "r", "--lr", "1", "--weight-decay", "1000", "--epochs", "20")
    assert main(args) == 2
    err = last_line(capsys)
    assert "The training loss became non-finite (NaN or inf)" in err
    assert "The weight decay (1000) is too high for the learning rate (1)" in err and "lower --weight-decay" in err
    assert "lower --lr" not in err


# --- 11. images beyond 8 bits -----------------------------------------------------------------------

def test_predict_scales_float_and_16_bit_images(tmp_path):
    from PIL import Image

    from alexnet_lab.data.images import load_image_28

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(56, 56)).astype(np.uint8)
    gray[:, :8] = 0  # a dark border so "auto" never inverts
    Image.fromarray(gray).save(tmp_path / "8bit.png")
    Image.fromarray(gray.astype(np.float32) / 255.0).save(tmp_path / "float.tiff")  # mode F, 0..1
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16bit.png")  # mode I;16, 0..65535
    assert Image.open(tmp_path / "float.tiff").mode == "F" and Image.open(tmp_path / "16bit.png").mode == "I;16"
    reference = load_image_28(tmp_path / "8bit.png").astype(int)
    assert reference.std() > 10
    for name in ("float.tiff", "16bit.png"):
        got = load_image_28(tmp_path / name).astype(int)
        assert np.abs(got - reference).max() <= 1, name


# --- 12. a device or precision that is not there ----------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--device", "cuda"], "--device cuda was asked for but no CUDA GPU is visible"),
    (["--precision", "fp16"], "--precision fp16 is not supported on the CPU"),
])
def test_unavailable_device_or_precision_leaves_no_folder(data_dir, tmp_path, capsys, flags, message):
    if flags[1] == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    out = tmp_path / "r"
    args = train_args(data_dir, out, *flags)
    assert main(args) == 2
    assert message in last_line(capsys)
    assert not out.exists()


# --- 13. Ctrl-C at start-up and after the last step -------------------------------------------------

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


def test_ctrl_c_while_loading_data_exits_130(data_dir, tmp_path, monkeypatch, capsys):
    import alexnet_lab.engine.run as train_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "splits_for", interrupted)  # what train loads the data with
    assert main(train_args(data_dir, tmp_path / "r")) == 130
    assert capsys.readouterr().err == "alexnet-lab train: interrupted.\n"
    assert not (tmp_path / "r").exists()


def test_resume_removes_temp_files_of_a_killed_save(data_dir, tmp_path):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 0
    torn = out / ".alexnet-lab-0123456789ab.tmp"  # what a SIGKILL in the middle of a save leaves
    torn.write_bytes(b"PK\x03\x04 torn")
    private = out / ".alexnet-lab-ba9876543210.tmp"  # ... and in the middle of an export-style write
    private.mkdir()
    (private / "f.onnx").write_bytes(b"torn")
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert not torn.exists() and not private.exists()
    assert load_checkpoint(out / "checkpoint.pt")["run_state"]["step"] == 4


# --- 14. --out "", resume advice, a folder as --checkpoint ------------------------------------------

def test_empty_out_is_refused(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(train_args(data_dir, "")) == 2
    assert last_line(capsys).endswith("--out is empty. Pass a folder name, or leave --out out for "
                                      "runs/<timestamp>-<model>.")
    assert not (tmp_path / "runs").exists() and sorted(os.listdir(tmp_path)) == []


def test_resume_from_a_corrupt_checkpoint_gives_resume_advice(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 0
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:5000])
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    err = last_line(capsys)
    assert f"Checkpoint '{path}' is truncated or corrupt" in err
    assert "--resume reads only the run's checkpoint.pt: to continue from its best.pt instead, copy best.pt " \
           "over checkpoint.pt" in err and "Use best.pt or an earlier copy" not in err


def test_evaluate_on_a_folder_says_it_is_a_folder(data_dir, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--data-dir", str(data_dir)]) == 2
    assert last_line(capsys) == (f"alexnet-lab evaluate: error: Checkpoint '{tmp_path}' is a folder, not a file. "
                                 f"Pass the checkpoint file itself, e.g. '{tmp_path / 'checkpoint.pt'}' or "
                                 f"'{tmp_path / 'best.pt'}'.")


def test_no_value_here_is_nan():
    """Guard for the JSON checks above: json.loads accepts NaN unless told otherwise."""
    assert math.isnan(json.loads("NaN"))
