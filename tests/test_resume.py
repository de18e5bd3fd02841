"""`train --resume`: a stopped or crashed run continues bit-exactly; what may change on resume (epochs,
device, the data's folder) and what may not (the recipe, the data themselves, without
--allow-data-change); the data fingerprint that tells; errors that name the file.

Tiny synthetic IDX files (tests/fakedata.py), CPU only, offline.
"""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
import torch
from torch import nn

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.trainer import Callback, StopRequested
from alexnet_lab.engine.run_dir import read_metrics
from alexnet_lab.models import registry
from runhelpers import (StopAt, assert_same_run, config_for, folder_state, last_line, recipe_args, run_fit, signal_at,
                        train_args)

pytestmark = pytest.mark.usefixtures("offline_cli")


def tiny_relu_dropout(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),  # (B, 4*13*13)
                         nn.Dropout(0.5), nn.Linear(4 * 13 * 13, num_classes))


@pytest.fixture
def tiny_model(monkeypatch) -> str:
    """A registered model with dropout (so the resumed RNG matters) and ReLU (so a high lr diverges)."""
    spec = registry.ModelSpec("tiny-dropout", tiny_relu_dropout, 28, "test model")
    monkeypatch.setitem(registry._REGISTRY, "tiny-dropout", spec)
    return "tiny-dropout"


class CrashAt(Callback):
    """A hard crash (power cut, OOM kill) at a step: no checkpoint, no clean-up."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step: int) -> None:
        if step == self.step:
            raise RuntimeError("simulated crash")


# --- bit-exact resume -------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_steps", [(5,), (16,), (7, 20)], ids=["mid-epoch", "epoch-end", "twice"])
def test_stop_and_resume_is_bit_exact(data_dir_512, tiny_model, tmp_path, stop_steps):
    config = config_for(data_dir_512, model=tiny_model)
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


def test_crash_after_checkpoint_every_resumes_bit_exact(data_dir_512, tmp_path):
    config = config_for(data_dir_512, checkpoint_every=4)
    run_fit(config, tmp_path / "a")
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_fit(config, out, [CrashAt(23)])
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["run_state"]["step"] == 20  # --checkpoint-every 4: step 20 is the last before 23
    assert len(read_metrics(out)) > len(payload["run_state"]["metrics"])  # rows logged after it
    run_fit(config, out, resume=payload)
    assert_same_run(tmp_path / "a", out)


def test_the_resume_test_can_fail(data_dir_512, tmp_path):
    """Guard: a resume that is off by one batch gives different weights, and the check sees it."""
    config = config_for(data_dir_512)
    run_fit(config, tmp_path / "a")
    with pytest.raises(StopRequested):
        run_fit(config, tmp_path / "b", [StopAt(5)])
    payload = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    payload["run_state"]["batch"] += 1  # resume one batch off: the data order is wrong
    run_fit(config, tmp_path / "b", resume=payload)
    with pytest.raises(AssertionError):
        assert_same_run(tmp_path / "a", tmp_path / "b")


def test_resume_appends_when_extending_epochs(data_dir_512, tmp_path, capsys):
    constant = ["--schedule", "constant"]  # a one-cycle schedule would change with the length
    assert main(recipe_args(data_dir_512, tmp_path / "a", *constant)) == 0
    args = recipe_args(data_dir_512, tmp_path / "b", *constant)
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    one_epoch = read_metrics(tmp_path / "b")
    assert main(["train", "--resume", str(tmp_path / "b")]) == 2
    assert "already finished its 1 epoch(s)" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "b"), "--epochs", "2"]) == 0
    assert read_metrics(tmp_path / "b")[:len(one_epoch)] == one_epoch
    assert json.loads((tmp_path / "b" / "config.json").read_text())["epochs"] == 2
    assert_same_run(tmp_path / "a", tmp_path / "b")


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


# --- what a resume may change -----------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--lr", "0.5"], "--lr cannot change when resuming"),
    (["--preset", "d2l"], "--preset cannot change when resuming"),
    (["--epochs", "0.5"], "--epochs may only grow"),
    (["--out", "elsewhere"], "--out cannot be combined with --resume"),
])
def test_resume_refuses_recipe_changes(data_dir_512, tmp_path, monkeypatch, capsys, extra, message):
    signal_at(monkeypatch, 3, signal.SIGINT)
    assert main(recipe_args(data_dir_512, tmp_path / "r")) == 130
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_resume_with_infinite_epochs_is_refused(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 0
    assert main(["train", "--resume", str(out), "--epochs", "inf"]) == 2
    assert last_line(capsys).endswith("--epochs must be a finite number, got inf.")


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


# --- errors that name the file ----------------------------------------------------------------------

def test_resume_errors_name_the_file(data_dir_512, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 2
    assert "holds no checkpoint.pt to resume from" in capsys.readouterr().err
    signal_at(monkeypatch, 3, signal.SIGINT)
    out = tmp_path / "r"
    assert main(recipe_args(data_dir_512, out)) == 130
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:5000])  # truncated (a copy cut short)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"Checkpoint '{path}' is truncated or corrupt" in err and "Traceback" not in err


def test_resume_from_a_corrupt_checkpoint_gives_resume_advice(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 0
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:5000])
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    err = last_line(capsys)
    assert f"Checkpoint '{path}' is truncated or corrupt" in err
    assert "--resume reads only the run's checkpoint.pt (best.pt holds the best weights for predicting, not the " \
           "optimizer's state a run continues from)" in err and "Use best.pt or an earlier copy" not in err


# --- a refused resume changes nothing ----------------------------------------------------------------

def finished_run(data_dir, out):
    assert main(train_args(data_dir, out, "--no-report", "--no-tensorboard")) == 0
    return out


@pytest.mark.parametrize("blocker", ["file", "symlink"])
def test_a_resume_refused_for_its_tensorboard_folder_changes_no_file(data_dir, tmp_path, capsys, blocker):
    from alexnet_lab.reports.tensorboard import unavailable

    if unavailable() is not None:
        pytest.skip(f"the tensorboard package cannot be imported here ({unavailable()})")
    out = finished_run(data_dir, tmp_path / "r")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "tensorboard").write_text("not a folder") if blocker == "file" else (out / "tensorboard").symlink_to(elsewhere)
    before = folder_state(tmp_path)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--tensorboard"]) == 2
    assert "writes TensorBoard events only into a folder of its own" in last_line(capsys)
    assert folder_state(tmp_path) == before  # config.json (epochs, total_steps, start_step) as it was


def test_a_resume_refused_for_its_checkpoints_values_changes_no_file(data_dir, tmp_path, capsys):
    """The NaN check runs as the checkpoint is loaded into the model, inside fit: after the run's
    files were opened for writing, once, so metrics.jsonl was cut back and summary.json removed."""
    out = finished_run(data_dir, tmp_path / "r")
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    weight = next(key for key, value in payload["model_state"].items() if value.is_floating_point())
    payload["model_state"][weight].fill_(float("nan"))
    torch.save(payload, out / "checkpoint.pt")
    before = folder_state(out)
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    assert "holds non-finite (NaN or inf) values" in last_line(capsys)
    assert folder_state(out) == before and (out / "summary.json").is_file()
