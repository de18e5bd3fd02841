"""reports/tensorboard.py and train's --tensorboard: event files in the run folder, read back with
TensorBoard's own reader (EventAccumulator) and compared with the run's metrics.jsonl and summary.json."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams.api_pb2 import Status

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.errors import UserError
from alexnet_lab.reports.tensorboard import make_folder

# 64 train / 32 test images at batch 16: 4 steps an epoch, each one a logged point.
TRAIN = ["train", "--model", "lenet", "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--no-report",
         "--progress", "none"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return fakedata.make_dataset(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=32)


def cli(*argv) -> tuple[int, str, str]:
    """`alexnet-lab ARGV` offline on one thread: (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, fakedata.one_thread():
        patch.setenv("ALEXNET_LAB_OFFLINE", "1")
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(list(argv))
    return code, stdout.getvalue(), stderr.getvalue()


def train(data_dir, out, *extra) -> tuple[int, str, str]:
    """`alexnet-lab train` on the tiny data into `out`."""
    return cli(*TRAIN, "--data-dir", str(data_dir), "--out", str(out), *extra)


def events(folder: Path) -> EventAccumulator:
    """Every event in `folder`, as TensorBoard loads them (0: keep all, no sampling)."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("runs") / "r"
    code, stdout, stderr = train(data_dir, out)  # no flag: on, the package being installed here
    assert code == 0, stderr
    return {"out": out, "stdout": stdout, "events": events(out / "tensorboard")}


def test_the_metrics_rows_are_scalars_at_their_steps(run):
    logged = rows(run["out"])
    assert [r["step"] for r in logged] == list(range(1, 9))
    for key in ("train_loss", "train_acc", "lr", "test_acc"):
        expected = [(r["step"], r[key]) for r in logged if key in r]
        got = [(e.step, e.value) for e in run["events"].Scalars(key)]
        assert [step for step, _ in got] == [step for step, _ in expected], key
        # TensorBoard stores a scalar as float32
        assert [value for _, value in got] == pytest.approx([value for _, value in expected], rel=1e-6), key
    assert [e.step for e in run["events"].Scalars("test_acc")] == [4, 8]  # evaluated at the epoch ends


def test_examples_per_second_is_the_rate_between_logged_points(run):
    logged = rows(run["out"])
    previous = [(0, 0.0)] + [(r["examples"], r["elapsed_s"]) for r in logged[:-1]]
    expected = [(r["examples"] - ex) / (r["elapsed_s"] - s) for r, (ex, s) in zip(logged, previous)]
    got = run["events"].Scalars("examples_per_s")
    assert [e.step for e in got] == [r["step"] for r in logged]
    assert [e.value for e in got] == pytest.approx(expected, rel=1e-5)


def test_the_end_of_a_run_adds_the_confusion_matrix_and_the_filters_as_images(run):
    images = {tag: run["events"].Images(tag) for tag in ("confusion_matrix", "first_layer_filters")}
    for tag, logged in images.items():
        assert [e.step for e in logged] == [8], tag  # once, at the last step
        with Image.open(io.BytesIO(logged[0].encoded_image_string)) as png:
            pixels = np.asarray(png.convert("L"), dtype=np.float32)
            assert png.size == (logged[0].width, logged[0].height), tag
        assert pixels.std() > 10, f"{tag} is blank"
    confusion, filters = images["confusion_matrix"][0], images["first_layer_filters"][0]
    assert confusion.width >= 600 and confusion.height >= 600  # 10 classes, counts legible
    # LeNet's first layer: 6 filters of 5x5 in one row, so a wide, short strip
    assert filters.width > 2 * filters.height and filters.height >= 40


def test_the_config_is_the_hparams_and_the_final_results_its_metrics(run):
    content = run["events"].PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    config = json.loads((run["out"] / "config.json").read_text())
    hparams = start.session_start_info.hparams
    assert hparams["model"].string_value == "lenet" and hparams["preset"].string_value == config["preset"]
    assert hparams["batch_size"].number_value == 16 and hparams["lr"].number_value == config["lr"]
    assert hparams["epochs"].number_value == 2 and hparams["augment"].string_value == str(config["augment"])
    assert "target_accuracy" not in hparams  # None: unset, left out
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert metrics == {"test_acc", "train_acc", "train_loss"}
    summary = json.loads((run["out"] / "summary.json").read_text())
    for tag in metrics:  # the dashboard shows each metric's last scalar: the run's final result
        assert run["events"].Scalars(tag)[-1].value == pytest.approx(summary[tag], rel=1e-6), tag
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == Status.Value("STATUS_SUCCESS")


def test_the_startup_output_says_where_the_events_go_and_how_to_view_them(run):
    out = run["out"]
    assert (f"TensorBoard: events in {out}/tensorboard/; view with: tensorboard --logdir {out}   "
            f"(--logdir {out.parent} compares the runs there)") in run["stdout"].splitlines()
    assert run["stdout"].splitlines()[-1].endswith(", checkpoint.pt, tensorboard/")
    assert [p.name.startswith("events.out.tfevents.") for p in (out / "tensorboard").iterdir()] == [True]


def test_a_failure_drawing_the_images_does_not_fail_the_finished_run(data_dir, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("alexnet_lab.reports.tensorboard.plot_confusion", out_of_memory)
    code, stdout, stderr = train(data_dir, tmp_path / "r", "--epochs", "1")
    assert code == 0, stderr
    assert stdout.splitlines()[-1] == "TensorBoard images not written (RuntimeError: CUDA out of memory)"
    accumulator = events(tmp_path / "r" / "tensorboard")
    assert accumulator.Tags()["images"] == [] and len(accumulator.Scalars("train_loss")) == 4
    assert "_hparams_/session_end_info" in accumulator.PluginTagToContent("hparams")


def test_no_tensorboard_writes_no_tensorboard_folder(data_dir, tmp_path):
    code, stdout, stderr = train(data_dir, tmp_path / "r", "--no-tensorboard", "--epochs", "1")
    assert code == 0, stderr
    assert not (tmp_path / "r" / "tensorboard").exists() and "TensorBoard" not in stdout
    assert (tmp_path / "r" / "summary.json").is_file()


@pytest.fixture
def without_tensorboard(monkeypatch):
    """As if the package were not installed (None in sys.modules makes an import fail; torch's module
    is hidden too, as it may have been imported already)."""
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith(("tensorboard.", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def test_asking_for_tensorboard_without_the_package_is_refused_with_the_install_command(
        data_dir, tmp_path, without_tensorboard):
    code, _, stderr = train(data_dir, tmp_path / "r", "--tensorboard")
    assert code == 2
    assert stderr.startswith("alexnet-lab train: error: --tensorboard needs the tensorboard package")
    assert "pip install tensorboard" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_without_the_package_a_run_trains_without_tensorboard(data_dir, tmp_path, without_tensorboard):
    code, stdout, stderr = train(data_dir, tmp_path / "r", "--epochs", "1")
    assert code == 0, stderr
    assert not (tmp_path / "r" / "tensorboard").exists() and "TensorBoard" not in stdout


def stop_at_step(monkeypatch, step: int) -> None:
    """The run stops as on a second Ctrl-C (no checkpoint) once the point of `step` is logged."""
    from alexnet_lab.reports.tensorboard import TensorBoardLogger

    logged = TensorBoardLogger.on_log

    def on_log(self, row):
        logged(self, row)
        if row["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(TensorBoardLogger, "on_log", on_log)


def test_a_resumed_run_shows_each_step_once_with_the_values_it_kept(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "r"
    stop_at_step(monkeypatch, 6)  # after epoch 1's checkpoint (step 4): steps 5 and 6 are trained again
    assert train(data_dir, out)[0] == 130
    monkeypatch.undo()
    code, _, stderr = cli("train", "--resume", str(out), "--progress", "none")
    assert code == 0, stderr
    assert len(list((out / "tensorboard").iterdir())) == 2  # one event file per process
    logged, accumulator = rows(out), events(out / "tensorboard")
    assert [r["step"] for r in logged] == list(range(1, 9))
    for key in ("train_loss", "examples_per_s"):
        assert [e.step for e in accumulator.Scalars(key)] == list(range(1, 9)), key
    # The second pass's values (its wall clock differs from the first's), from the resumed checkpoint on
    previous = [(r["examples"], r["elapsed_s"]) for r in logged[3:7]]
    expected = [(r["examples"] - ex) / (r["elapsed_s"] - s) for r, (ex, s) in zip(logged[4:], previous)]
    assert [e.value for e in accumulator.Scalars("examples_per_s")[4:]] == pytest.approx(expected, rel=1e-5)
    assert [e.step for e in accumulator.Images("confusion_matrix")] == [8]


def test_a_run_stopped_before_its_first_checkpoint_leaves_no_event_files(data_dir, tmp_path, monkeypatch):
    stop_at_step(monkeypatch, 1)
    code, _, stderr = train(data_dir, tmp_path / "runs" / "r")
    assert code == 130, stderr
    assert not (tmp_path / "runs").exists()  # the run folder and its parent went, as they came


def test_a_link_in_place_of_the_tensorboard_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").symlink_to(elsewhere)
    with pytest.raises(UserError, match="is a symbolic link"):
        make_folder(run)
    assert list(elsewhere.iterdir()) == [] and os.path.islink(run / "tensorboard")
    (run / "tensorboard").unlink()
    (run / "tensorboard").write_text("mine")
    with pytest.raises(UserError, match="is not a folder"):
        make_folder(run)
    assert (run / "tensorboard").read_text() == "mine"
