"""One door into the data: every command that trains or evaluates reads its splits with
`builders.splits_for(config)`, every command that reads a checkpoint its test split with
`evaluation.checkpoint_test_split`; commands that cannot use other data refuse `--data` clearly. Data
that cannot be used (missing, damaged, empty, a failed download) is one line naming the file or folder,
exit 2, and no run folder.

Tiny synthetic data (tests/fakedata.py, tests/imagedata.py), CPU only, offline.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fakedata
from alexnet_lab.analysis.sweep import child_command, sweep_configs
from alexnet_lab.cli import build_parser, main
from alexnet_lab.cli.options import config_from_args
from alexnet_lab.data.fashion_mnist import CLASS_NAMES
from alexnet_lab.engine.builders import splits_for
from alexnet_lab.engine.config import TrainConfig, make_config
from alexnet_lab.engine.evaluation import checkpoint_test_split
from alexnet_lab.errors import UserError
from imagedata import make_shapes
from runhelpers import SRC as SRC_ROOT
from runhelpers import last_line, recipe_args, train_args

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet_lab"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SHAPES = ("circle", "square")


pytestmark = pytest.mark.usefixtures("offline_private_cache")  # conftest.py


@pytest.fixture
def shapes(tmp_path) -> Path:
    """8 images of 2 classes: the default --val-fraction 0.2 holds out one per class, 6 train / 2 val."""
    return make_shapes(tmp_path / "shapes", per_class=4, classes=SHAPES)


# --- commands that train -------------------------------------------------------------------------------

def test_record_trains_on_the_image_folder_given_with_data(shapes, capsys):
    assert main(["record", "--data", f"imagefolder:{shapes}", "--preset", "speedrun", "--seeds", "1",
                 "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["data"] == f"imagefolder:{shapes}"
    # The folder's 6 training and 2 validation images, not Fashion-MNIST's 60,000 / 10,000.
    (head,) = [line for line in lines if line.startswith("speedrun: target")]
    assert "on 2 test images" in head and "(6 training images)" in head, head
    assert any(line.strip().startswith(f"data       {shapes}: 2 classes, 6 train / 2 val images")
               for line in lines), lines


def test_sweep_hands_each_child_process_the_data_of_its_command_line(shapes, tmp_path):
    spec = f"imagefolder:{shapes}"
    args = build_parser().parse_args(["sweep", "--data", spec, "--batch-sizes", "4,8", "--val-fraction", "0.25"])
    configs = sweep_configs(config_from_args(args), [4, 8])
    for config in configs:
        child = TrainConfig.from_dict(json.loads(child_command(config, tmp_path / "bs")[-2]))
        assert (child.data, child.val_fraction) == (spec, 0.25)
        splits = splits_for(child)  # what the child's fit() trains on
        assert splits.class_names == SHAPES and len(splits.train_images) + len(splits.test_images) == 8


def test_bench_refuses_data_other_than_fashion_mnist_before_loading_any(shapes, monkeypatch, capsys):
    import alexnet_lab.cli.bench as bench_cli

    def never(*args, **kwargs):
        raise AssertionError("bench loaded data it was told it cannot time")

    monkeypatch.setattr(bench_cli, "splits_for", never)
    assert main(["bench", "--data", f"imagefolder:{shapes}", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("alexnet-lab bench: error: bench times the book's Fashion-MNIST pipeline")
    assert f"(--data imagefolder:{shapes})" in err and f"'alexnet-lab train --data imagefolder:{shapes}" in err


def test_profile_refuses_a_data_flag_it_has_no_use_for(capsys):
    """profile measures a model's shape (--channels, --num-classes), no data: --data is no flag of it."""
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "--model", "lenet", "--data", "imagefolder:somewhere"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --data imagefolder:somewhere" in capsys.readouterr().err


def test_splits_for_honours_every_data_setting_of_the_config(tmp_path, shapes):
    fmnist = fakedata.make_dataset(tmp_path / "fmnist", n_train=20, n_test=10)
    splits = splits_for(make_config("d2l", data_dir=str(fmnist), limit_train=7, limit_test=3, channels=3))
    assert splits.train_images.shape == (7, 3, 28, 28) and splits.test_images.shape == (3, 3, 28, 28)
    assert splits.class_names == CLASS_NAMES
    folder = splits_for(make_config("speedrun", data=f"imagefolder:{shapes}", val_fraction=0.5, channels=1))
    assert folder.class_names == SHAPES and folder.train_images.shape[1:] == (1, 28, 28)
    assert (len(folder.train_images), len(folder.test_images)) == (4, 4)  # half of each class held out


@contextlib.contextmanager
def readers_of_the_data(*functions):
    """Record, for every call of one of `functions` (found by their code, however a module refers to them),
    the names of the functions on the stack above it: who read the data, and through which door."""
    codes = {f.__code__ for f in functions}
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            names, caller = [], frame.f_back
            while caller is not None:
                names.append(caller.f_code.co_name)
                caller = caller.f_back
            calls.append(names)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(previous)


def test_every_command_reads_the_data_through_splits_for(data_dir, tmp_path, capsys, offline_private_cache):
    """The one door into the data: every IDX file any command reads (train, sweep's own run, record,
    bench, profile's real batch where it has one) is read below `splits_for`. A second door under any
    name would read the files without it on the stack."""
    from alexnet_lab.data.idx import parse_idx

    with readers_of_the_data(parse_idx) as calls:
        assert main(train_args(data_dir, tmp_path / "run", "--no-report", "--no-tensorboard")) == 0
        assert main(["record", "--preset", "speedrun", "--model", "lenet", "--seeds", "1", "--data-dir",
                     str(data_dir), "--device", "cpu", "--epochs", "0.5"]) in (0, 1)
    capsys.readouterr()
    assert len(calls) >= 8  # four files, for train and for record
    assert all("splits_for" in names for names in calls), [names[:6] for names in calls]


def test_every_command_that_reads_a_checkpoint_reads_its_test_data_through_one_function(
        lenet_checkpoint, data_dir_512, tmp_path, capsys, offline_private_cache):
    """evaluate, visualize, export's check and the report read a checkpoint's test data only through
    `evaluation.checkpoint_test_split` (the run's data and split, read with the model's channels)."""
    from alexnet_lab.data.idx import parse_idx

    run = lenet_checkpoint.parent
    with readers_of_the_data(parse_idx) as calls:
        assert main(["evaluate", "--checkpoint", str(lenet_checkpoint), "--device", "cpu",
                     "--out", str(tmp_path / "e")]) == 0
        assert main(["visualize", "--checkpoint", str(lenet_checkpoint), "--device", "cpu",
                     "--out", str(tmp_path / "v")]) == 0
        assert main(["export", "--checkpoint", str(lenet_checkpoint), "--format", "safetensors",
                     "--out", str(tmp_path / "m.safetensors"), "--check-images", "2"]) == 0
        assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    capsys.readouterr()
    assert calls and all("checkpoint_test_split" in names for names in calls), [names[:6] for names in calls]


# --- commands that read a checkpoint ---------------------------------------------------------------------

@pytest.fixture
def payload() -> dict:
    """The parts of a checkpoint that say which data its model takes: 3-channel Fashion-MNIST."""
    return {"model_kwargs": {"in_channels": 3, "num_classes": 10}, "class_names": list(CLASS_NAMES)}


def test_a_checkpoints_test_split_is_its_runs_read_with_the_models_channels(tmp_path, payload):
    data = fakedata.make_dataset(tmp_path / "fmnist", n_train=20, n_test=10)
    run = make_config("d2l", model="lenet", data_dir=str(data), limit_test=6)
    splits = checkpoint_test_split(run, payload)
    assert splits.test_images.shape == (6, 3, 28, 28)  # the run's --limit-test, the model's channels
    expected = torch.from_numpy(fakedata.make_arrays(20, 10)["test_images"][:6])
    assert torch.equal(splits.test_images[:, 0], expected) and torch.equal(splits.test_images[:, 2], expected)
    assert len(checkpoint_test_split(run, payload, limit=9).test_images) == 9
    moved = fakedata.make_dataset(tmp_path / "elsewhere", n_train=20, n_test=10, seed=1)
    assert not torch.equal(checkpoint_test_split(run, payload, data_dir=str(moved)).test_images, splits.test_images)


def test_a_checkpoints_test_split_refuses_data_of_other_classes(tmp_path, payload, shapes):
    run = make_config("d2l", model="lenet", data_dir=str(fakedata.make_dataset(tmp_path / "f", 20, 10)))
    with pytest.raises(UserError, match=r"The data's classes \(circle, square\) are not the ones the "
                                        r"checkpoint's model was trained on \(t-shirt, trouser"):
        checkpoint_test_split(run, payload, data=f"imagefolder:{shapes}")


def test_export_and_visualize_decode_only_the_images_they_use(tmp_path, monkeypatch, capsys):
    """export's check compares the model on its first N test images, visualize shows one: of an image
    folder's files those are decoded, and no other (the manifest lists the files without decoding them)."""
    from alexnet_lab.data import imagefolder

    folder = make_shapes(tmp_path / "shapes", per_class=15, classes=SHAPES)  # 24 train / 6 val
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet", "--data", f"imagefolder:{folder}", "--epochs", "1", "--batch-size",
                 "8", "--device", "cpu", "--out", str(run), "--no-report", "--no-tensorboard"]) == 0
    decoded, real = [], imagefolder.decode_image
    monkeypatch.setattr(imagefolder, "decode_image", lambda path, *a, **k: (decoded.append(path), real(path, *a, **k))[1])
    val = (run / "val_files.txt").read_text().splitlines()
    assert main(["export", "--checkpoint", str(run / "checkpoint.pt"), "--format", "safetensors", "--out",
                 str(tmp_path / "m.safetensors"), "--check-images", "2"]) == 0
    assert "Check on the first 2 test images" in capsys.readouterr().out
    assert [p.relative_to(folder).as_posix() for p in decoded] == val[:2]
    decoded.clear()
    assert main(["visualize", "--checkpoint", str(run / "checkpoint.pt"), "--test-index", "4", "--device", "cpu",
                 "--out", str(tmp_path / "v")]) == 0
    assert [p.relative_to(folder).as_posix() for p in decoded] == [val[4]]


# --- data that cannot be used: one line, exit 2, no run folder -----------------------------------------

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
    assert main(recipe_args(folder, out)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("alexnet-lab train: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_bad_data_error_in_a_real_process(tmp_path):
    """What a shell user sees: one line on stderr, exit status 2, no traceback, no run folder."""
    folder = fakedata.make_dataset(tmp_path / "data", n_train=64, n_test=32)
    corrupt("label-out-of-range", folder)
    env = {**os.environ, "PYTHONPATH": str(SRC_ROOT), "ALEXNET_LAB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "alexnet_lab", *recipe_args(folder, tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"alexnet-lab train: error: '{folder / 't10k-labels-idx1-ubyte.gz'}' has label 10, "
                           "outside 0..9. The file is corrupt; replace it with the official one.\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("n_train, n_test, split", [(0, 32, "training"), (64, 0, "test")])
def test_empty_data_is_a_clear_error(tmp_path, capsys, n_train, n_test, split):
    folder = fakedata.make_dataset(tmp_path / "data", n_train=n_train, n_test=n_test)
    out = tmp_path / "r"
    assert main(train_args(folder, out)) == 2
    assert last_line(capsys) == (f"alexnet-lab train: error: The {split} set in '{folder}' holds no images: a "
                                 "run needs at least one training and one test image. Point --data-dir at a "
                                 "complete data set.")
    assert not out.exists()


def test_download_checksum_mismatch_removes_the_partial_file(tmp_path, monkeypatch, capsys):
    mirror = fakedata.make_dataset(tmp_path / "mirror", n_train=64, n_test=32)  # not the real content
    monkeypatch.delenv("ALEXNET_LAB_OFFLINE")
    monkeypatch.setenv("ALEXNET_LAB_MIRROR", mirror.as_uri())
    target = tmp_path / "download"
    assert main(recipe_args(target, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "Checksum mismatch for file://" in err and "The partial file was removed" in err
    assert list(target.iterdir()) == []
    assert not (tmp_path / "run").exists()


def test_full_disk_while_downloading(tmp_path, monkeypatch, capsys):
    mirror = fakedata.make_dataset(tmp_path / "mirror", n_train=64, n_test=32)
    monkeypatch.delenv("ALEXNET_LAB_OFFLINE")
    monkeypatch.setenv("ALEXNET_LAB_MIRROR", mirror.as_uri())
    monkeypatch.setattr(os, "fdopen", fakedata.FullDisk(files_ok=0))
    target = tmp_path / "download"
    assert main(recipe_args(target, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert f"error: Writing '{target / 'train-images-idx3-ubyte.gz'}' failed while downloading it: No space " \
           "left on device. The partial file was removed" in err
    assert list(target.iterdir()) == [] and not (tmp_path / "run").exists()
