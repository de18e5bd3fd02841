"""Messages a user reads when something is wrong: each says what is wrong, names the right thing (the
flag, the file, the folder, the variable) and what to do; none is a traceback, under any terminal encoding.

Tiny synthetic data (tests/fakedata.py, tests/imagedata.py), CPU only, offline.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.engine import checkpoint as ckpt
from alexnet_lab.engine import preflight
from alexnet_lab.errors import UserError
from imagedata import make_shapes


pytestmark = pytest.mark.usefixtures("offline_private_cache")  # conftest.py


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return fakedata.make_dataset(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=32)


def train_args(data_dir, out, *extra):
    return ["train", "--model", "lenet", "--data-dir", str(data_dir), "--epochs", "1", "--batch-size", "32",
            "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory) -> dict[int, Path]:
    """A finished 1-epoch run on Fashion-MNIST as 1-channel and as 3-channel images: {channels: run folder}."""
    base = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp, fakedata.one_thread():
        mp.setenv("ALEXNET_LAB_OFFLINE", "1")
        for channels in (1, 3):
            assert main(train_args(data_dir, base / f"c{channels}", "--channels", str(channels), "--no-report")) == 0
    return {1: base / "c1", 3: base / "c3"}


def last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# --- flags, variables and terminals -------------------------------------------------------------------

@pytest.mark.parametrize("model_channels, asked", [(1, 3), (3, 1)])
def test_evaluate_refuses_channels_the_checkpoints_model_does_not_take(runs, data_dir, capsys, model_channels,
                                                                       asked):
    checkpoint = runs[model_channels] / "checkpoint.pt"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--device", "cpu",
                 "--channels", str(asked)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"alexnet-lab evaluate: error: --channels {asked} does not fit {checkpoint}: its model takes "
        f"{model_channels}-channel images. Drop --channels: evaluate reads the data with the model's channels.")
    assert "Traceback" not in err


@pytest.mark.filterwarnings("ignore:Glyph")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace/save
def test_commands_read_an_image_folder_with_the_models_channels_after_it_changed(tmp_path, capsys):
    """A model trained on colour images (channels inferred: 3) used on the folder after its images
    became grayscale (inferred now: 1): the data are read again as the model's 3 channels."""
    from PIL import Image

    root = make_shapes(tmp_path / "shapes", per_class=4, classes=("circle", "square"))
    out = tmp_path / "run"
    assert main(["train", "--model", "lenet", "--data", f"imagefolder:{root}", "--epochs", "1", "--batch-size",
                 "4", "--device", "cpu", "--out", str(out), "--no-report"]) == 0
    for path in list(root.rglob("*.*")):  # as grayscale PNGs (a GIF reopens as "P", a WebP as "RGB")
        gray = Image.open(path).convert("L")
        path.unlink()
        gray.save(path.with_suffix(".png"))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu"]) == 0
    assert "test acc" in capsys.readouterr().out
    assert main(["visualize", "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu"]) == 0
    assert (out / "feature_maps.png").is_file()
    assert main(["export", "--checkpoint", str(out / "checkpoint.pt"), "--format", "pt2",
                 "--out", str(tmp_path / "model.pt2"), "--check-images", "2"]) == 0
    assert "Check on the first 2 test images: pt2 (torch.export) and PyTorch outputs match" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "lots"])
def test_a_cache_memory_limit_that_is_not_a_size_is_refused_naming_the_variable(tmp_path, monkeypatch, capsys,
                                                                                 value):
    root = make_shapes(tmp_path / "shapes", per_class=2, classes=("circle", "square"))
    monkeypatch.setenv(preflight.ENV_MEMORY_LIMIT, value)
    assert main(["train", "--model", "lenet", "--data", f"imagefolder:{root}", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"alexnet-lab train: error: $ALEXNET_LAB_CACHE_MEMORY_MB must be a number of MiB, 0 or more (0: always "
        f"stream image folders), got '{value}'. Set it to e.g. 4096, or unset it.")
    assert "Traceback" not in err


def test_bench_refuses_a_peak_size_beyond_its_bound_before_allocating(monkeypatch, capsys):
    import alexnet_lab.analysis.bench as bench
    import alexnet_lab.cli.bench as bench_cli

    def never(*args, **kwargs):
        raise AssertionError("bench loaded data or ran a matmul before checking --peak-size")

    monkeypatch.setattr(bench_cli, "splits_for", never)
    monkeypatch.setattr(bench, "matmul_peak", never)
    assert main(["bench", "--peak-size", "2147483647", "--device", "cpu"]) == 2
    assert last_line(capsys).startswith(f"alexnet-lab bench: error: bench: --peak-size must be at most "
                                        f"{bench.MAX_PEAK_SIZE}, got 2147483647")
    assert bench.BenchConfig(peak_size=bench.MAX_PEAK_SIZE).peak_size == 16384  # the bound itself is fine


@pytest.mark.filterwarnings("ignore:Glyph")  # DejaVu Sans, matplotlib's font, has no 猫
def test_unicode_class_names_and_out_folder_print_on_an_ascii_terminal(tmp_path, monkeypatch):
    """PYTHONIOENCODING=ascii: stdout and stderr are ASCII text streams. Characters they lack are
    written as backslash escapes; the run, its report and evaluate all finish."""
    root = make_shapes(tmp_path / "shapes", per_class=4, classes=("café", "猫"))
    out = tmp_path / "rün"
    streams = {name: io.TextIOWrapper(io.BytesIO(), encoding="ascii") for name in ("stdout", "stderr")}
    for name, stream in streams.items():
        monkeypatch.setattr(sys, name, stream)
    assert main(["train", "--model", "lenet", "--data", f"imagefolder:{root}", "--epochs", "1", "--batch-size",
                 "4", "--device", "cpu", "--out", str(out)]) == 0
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu"]) == 0
    printed = {}
    for name, stream in streams.items():
        stream.flush()
        printed[name] = stream.buffer.getvalue().decode("ascii")
    assert "r\\xfcn" in printed["stdout"] and "Report:" in printed["stdout"]
    assert "caf\\xe9" in printed["stdout"] and "\\u732b" in printed["stdout"]  # evaluate's per-class table
    assert (out / "report.html").is_file() and "café" in (out / "report.html").read_text(encoding="utf-8")


# --- files and folders --------------------------------------------------------------------------------

def test_a_first_checkpoint_save_that_fails_does_not_claim_a_previous_one_is_intact(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(UserError) as refused:
        ckpt.save_checkpoint(path, {"weights": torch.zeros(3)})
    assert str(refused.value).endswith("Free disk space or choose another --out; no checkpoint was written.")
    assert "intact" not in str(refused.value) and list(tmp_path.iterdir()) == []


def test_export_with_an_empty_out_names_the_flag(runs, capsys):
    assert main(["export", "--checkpoint", str(runs[1] / "checkpoint.pt"), "--out", ""]) == 2
    assert last_line(capsys) == "alexnet-lab export: error: --out is empty. Pass a file name."


def test_an_image_folder_with_one_image_per_class_names_the_folder_and_advises_adding_images(tmp_path, capsys):
    root = make_shapes(tmp_path / "shapes", per_class=1, classes=("circle", "square"))
    assert main(["train", "--model", "lenet", "--data", f"imagefolder:{root}", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 2
    err = last_line(capsys)
    assert err == (f"alexnet-lab train: error: Image folder '{root}' cannot be split into training and validation "
                   "images: every class has only one readable image, and a class gives validation images "
                   "(--val-fraction) only when it has two or more. Add images to the class folders, or put "
                   "validation images in DIR/val/<class>/ beside DIR/train/<class>/.")
    assert "--data-dir" not in err and "decoded in memory" not in err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save
def test_a_torchscript_file_that_names_python_code_is_refused_with_the_name(tmp_path, capsys):
    """A TorchScript archive whose data.pkl calls os.system: refused before anything reads it, naming it."""
    marker = tmp_path / "ran"

    class Code:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    plain, evil = tmp_path / "plain.pt", tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            is_data = item.filename.endswith("/data.pkl")
            zout.writestr(item, pickle.dumps(Code(), protocol=2) if is_data else zin.read(item.filename))
    image = tmp_path / "x.png"
    shutil.copy(next((make_shapes(tmp_path / "img", per_class=1, classes=("a",)) / "a").glob("*.png")), image)
    assert main(["predict", "--model-file", str(evil), str(image)]) == 2
    err = last_line(capsys)
    assert f"'{evil}' is not a model file as alexnet-lab export writes it" in err, err
    assert not marker.exists()


def test_resuming_a_checkpoint_with_nan_weights_blames_the_checkpoint_not_the_learning_rate(runs, tmp_path,
                                                                                          capsys):
    run = shutil.copytree(runs[1], tmp_path / "run")
    payload = ckpt.load_checkpoint(run / "checkpoint.pt")
    name = next(iter(payload["model_state"]))
    payload["model_state"][name][0] = float("nan")
    ckpt.save_checkpoint(run / "checkpoint.pt", payload)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = last_line(capsys)
    assert (f"The checkpoint to resume from holds non-finite (NaN or inf) values in model_state.{name}, so no "
            "training can continue from it.") in err
    assert "Restore checkpoint.pt from a copy, or retrain" in err
    assert "--lr" not in err and "learning rate" not in err
