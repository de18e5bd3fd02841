"""Forged and damaged files: checkpoints, exported model files and run folders whose fields have the wrong
type, range or model are refused by every command with one clear error (exit 2), never a traceback or an
impossible allocation; property-based fuzzing of each file's fields checks that nothing else can happen.

One tiny LeNet run (synthetic data, CPU, offline) is trained per module; each test forges a copy of its files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import fakedata
import zipdata
from suite import examples
from alexnet_lab.cli import main

DELETE = object()  # a field value meaning "remove the field"
FUZZ = settings(max_examples=examples(40), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@contextlib.contextmanager
def offline_and_unrendered():
    """No downloads; one intra-op thread; figures drawn but not rendered (rendering is tested elsewhere)."""
    import alexnet_lab.reports.plots as plots

    with pytest.MonkeyPatch.context() as mp, fakedata.one_thread():
        mp.setenv("ALEXNET_LAB_OFFLINE", "1")
        mp.setattr(plots, "_save", lambda fig, paths, suptitle="": None)
        yield


@pytest.fixture(autouse=True)
def offline_one_thread():
    with offline_and_unrendered():
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A finished 1-epoch LeNet run (2 steps) with momentum and an average of the weights, so its
    checkpoint holds every part (momentum buffers, ema_state); its torch.export (.pt2) export; a test image."""
    base = tmp_path_factory.mktemp("forged")
    data = fakedata.make_dataset(base / "data", n_train=64, n_test=32)
    run = base / "run"
    with offline_and_unrendered():
        assert main(["train", "--model", "lenet", "--data-dir", str(data), "--epochs", "1", "--batch-size", "32",
                     "--momentum", "0.9", "--ema-decay", "0.5", "--device", "cpu", "--out", str(run),
                     "--no-report", "--progress", "none"]) == 0
        assert main(["export", "--checkpoint", str(run / "checkpoint.pt"), "--format", "pt2",
                     "--out", str(base / "model.pt2"), "--check-images", "2"]) == 0
    from PIL import Image

    Image.new("L", (40, 30), 200).save(base / "image.png")
    (meta_text,) = [data for name, data in zipdata.members(base / "model.pt2")
                    if name.endswith("/extra/alexnet_lab.json")]
    return {"data": data, "run": run, "pt2": base / "model.pt2", "image": base / "image.png",
            "meta": json.loads(meta_text)}


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1] if err.strip() else ""


def set_field(container, path: tuple, value):
    """container[path[0]][path[1]]... = value (or deleted, for DELETE); tuples on the way become lists."""
    *parents, last = path
    for key in parents:
        child = container[key]
        if isinstance(child, tuple):
            child = container[key] = list(child)
        container = child
    if value is DELETE:
        del container[last]
    else:
        container[last] = value


def forge_checkpoint(source: Path, target: Path, path: tuple, value) -> Path:
    payload = torch.load(source, weights_only=True)
    set_field(payload, path, value)
    torch.save(payload, target)
    return target


def copy_run(run: Path, target: Path, *, checkpoints: bool = True) -> Path:
    shutil.copytree(run, target, ignore=None if checkpoints else shutil.ignore_patterns("*.pt"))
    return target


def commands(trained, checkpoint: Path, out: Path) -> list[list[str]]:
    """Every command that reads a checkpoint's model (train --resume: see the resume tests)."""
    return [["predict", "--checkpoint", str(checkpoint), "--device", "cpu", str(trained["image"])],
            ["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(trained["data"]), "--device", "cpu",
             "--out", str(out)],
            ["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out / "m.safetensors")],
            ["visualize", "--checkpoint", str(checkpoint), "--data-dir", str(trained["data"]), "--device", "cpu",
             "--out", str(out)]]


# --- checkpoints -------------------------------------------------------------------------------------

NINE_NAMES = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
CHECKPOINT_CASES = {
    "model_name is a list": (("model_name",), ["lenet"], "model_name must be one of alexnet"),
    "model_name is unknown": (("model_name",), "resnet-9000", "model_name must be one of alexnet"),
    "num_classes is negative": (("model_kwargs", "num_classes"), -5,
                                "model_kwargs.num_classes must be in [2, 100000], got -5"),
    "ema_state is a string": (("ema_state",), "ema", "ema_state must be a dict (a JSON object), got 'ema'"),
    "config is a list": (("config",), ["lenet"], "config must be a dict (a JSON object), got a list of 1 item(s)"),
    "config is empty": (("config",), {}, "config lacks model"),
    "config names another model": (("config", "model"), "alexnet",
                                   "config names model 'alexnet' but model_name is 'lenet'"),
    "config has a wrong type": (("config", "nesterov"), "yes", "config is not a valid configuration (--nesterov "
                                                               "must be true or false, got 'yes')"),
    "config names no augmentation": (("config", "augment"), "yes", "config is not a valid configuration (--augment "
                                                                   "must be one of none or kinds joined by '+'"),
    "config is out of range": (("config", "lr"), -1.0, "config is not a valid configuration (--lr must be in "
                                                       "(0, 10000], got -1)"),
    "config names no device": (("config", "device"), "cuda:x", "config is not a valid configuration (--device must "
                                                               "be one of auto, cpu"),
    "too few class names": (("class_names",), NINE_NAMES, "class_names holds 9 name(s) for the model's 10 outputs"),
    "a class name is not text": (("class_names", 3), 3, "class_names[3] must be text, got 3"),
    "run_state.step is a string": (("run_state", "step"), "2", "run_state.step must be a whole number, got '2'"),
    "versions is a list": (("versions",), ["2.13"], "versions must be a dict"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_every_model_command_refuses_a_checkpoint_with_a_forged_field(trained, tmp_path, capsys, case):
    path, value, message = CHECKPOINT_CASES[case]
    forged = forge_checkpoint(trained["run"] / "checkpoint.pt", tmp_path / "forged.pt", path, value)
    for argv in commands(trained, forged, tmp_path / "out"):
        assert main(argv) == 2, argv
        err = error_line(capsys)
        assert f"Checkpoint '{forged}' is damaged or was not written by alexnet-lab: {message}" in err, (argv, err)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_untouched_checkpoint_works_with_every_model_command(trained, tmp_path, capsys):
    """Guard for the test above: the commands succeed on the checkpoint it forges."""
    checkpoint = trained["run"] / "checkpoint.pt"
    for argv in commands(trained, checkpoint, tmp_path / "out"):
        assert main(argv) == 0, (argv, capsys.readouterr().err)


def test_report_says_why_a_forged_checkpoint_has_no_model_sections(trained, tmp_path, capsys):
    run = copy_run(trained["run"], tmp_path / "run")
    forge_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt", ("model_name",), ["lenet"])
    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert f"The model sections are missing: Checkpoint &#39;{run / 'checkpoint.pt'}&#39; is damaged" in page


RESUME_CASES = {
    "run_state is empty": (("run_state",), {}, "run_state lacks epoch, batch, step, examples, metrics"),
    "run_state.step is a string": (("run_state", "step"), "2", "run_state.step must be a whole number, got '2'"),
    "run_state has more epochs than steps": (("run_state", "epoch"), 5, "run_state.epoch is 5, more than the 2 "
                                                                        "steps done"),
    "a metrics row is not an object": (("run_state", "metrics", 0), [1, 2], "run_state.metrics[0] must be a dict"),
    "a momentum buffer has another shape": (("optimizer_state", "state", 0, "momentum_buffer"), torch.zeros(3),
                                            "optimizer_state.state[0].momentum_buffer must be a float tensor of "
                                            "shape (6, 1, 5, 5)"),
    "the learning rate is text": (("optimizer_state", "param_groups", 0, "lr"), "fast",
                                  "optimizer_state.param_groups[0].lr must be a number, got 'fast'"),
    "the scheduler would overwrite its optimizer": (("scheduler_state", "optimizer"), 5,
                                                    "scheduler_state has unknown key(s) 'optimizer'"),
    "a Python RNG word is too large": (("rng", "python", 1, 0), 2**40,
                                       "rng.python[1][0] must be in [0, 4294967295], got 1099511627776"),
    "the torch RNG state is text": (("rng", "torch"), "seed", "rng.torch must be a uint8 tensor"),
    "ema_state is missing": (("ema_state",), DELETE, "ema_state is missing, but the run keeps an average of the "
                                                     "weights (ema_decay 0.5)"),
    "the data fingerprint is text": (("data_fingerprint", "train"), "same", "data_fingerprint.train must be a dict"),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_refuses_a_checkpoint_with_a_forged_field(trained, tmp_path, capsys, case):
    path, value, message = RESUME_CASES[case]
    run = copy_run(trained["run"], tmp_path / "run")
    forged = forge_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt", path, value)
    before = forged.read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--progress", "none", "--no-report"]) == 2
    err = error_line(capsys)
    assert f"Checkpoint '{forged}' is damaged or was not written by alexnet-lab: {message}" in err, err
    assert "restore checkpoint.pt from a copy" in err  # resume's advice, not the other commands'
    assert forged.read_bytes() == before


# --- exported model files ----------------------------------------------------------------------------

def onnx_model(meta_text: str | None, channels: int = 1, size: int = 28, classes: int = 10,
               names: tuple[str, str] = ("images", "logits")) -> bytes:
    """A linear classifier as an ONNX graph written with onnx.helper (independent of the exporter):
    float32 (batch, C, S, S) -> (batch, classes), with `meta_text` as alexnet-lab's metadata."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((channels * size * size, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", [names[0]], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w", "b"], [names[1]])], "linear",
        [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info(names[1], TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(weights * 0.01, "w"),
                     numpy_helper.from_array(np.zeros(classes, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if meta_text is not None:
        helper.set_model_props(model, {"alexnet_lab": meta_text})
    return model.SerializeToString()


def pt2_model(source: Path | None, meta_text: str, target: Path, module=None) -> Path:
    """`source`'s .pt2 with `meta_text` as its metadata (the rest byte for byte), or `module` exported so."""
    if module is None:
        return zipdata.rewrite_member(source, target, "extra/alexnet_lab.json", lambda _: meta_text.encode())
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, (torch.rand(2, 2),)), buffer,
                      extra_files={"alexnet_lab.json": meta_text})
    target.write_bytes(buffer.getvalue())
    return target


def model_file(trained, tmp_path: Path, kind: str, meta_text, name: str | None = None, **graph) -> Path:
    target = tmp_path / (name or ("model.onnx" if kind == "onnx" else "model.pt2"))
    if kind == "onnx":
        target.write_bytes(onnx_model(meta_text, **graph))
        return target
    return pt2_model(trained["pt2"], meta_text, target)


@pytest.fixture
def decoded_sizes(monkeypatch) -> list:
    """The sizes predict decodes images at; one above 4096 fails the test before it allocates."""
    import alexnet_lab.engine.inference as inference

    sizes, real = [], inference.load_image

    def load_image(path, size, channels):
        sizes.append(size)
        assert size <= 4096, f"predict decoded an image at {size}x{size}"
        return real(path, size, channels)

    monkeypatch.setattr(inference, "load_image", load_image)
    return sizes


def with_meta(meta: dict, **changes) -> str:
    meta = dict(meta)
    for key, value in changes.items():
        if value is DELETE:
            meta.pop(key, None)
        else:
            meta[key] = value
    return json.dumps(meta)


MODEL_FILE_CASES = {
    "metadata that is not JSON": (lambda meta: "{not json", "has metadata that is not JSON"),
    "metadata that is a list": (lambda meta: "[1, 2]", "was not written by alexnet-lab export (no "
                                                       "alexnet-lab-model/1 metadata)"),
    "metadata without class names": (lambda meta: with_meta(meta, class_names=DELETE), "its metadata lacks "
                                                                                       "class_names"),
    "input size 0": (lambda meta: with_meta(meta, input_size=0), "input_size must be in [1, 4096], got 0"),
    "one class": (lambda meta: with_meta(meta, class_names=["only"]), "class_names must have 2 to 100000 item(s)"),
    "too few classes for the graph": (lambda meta: with_meta(meta, class_names=["a", "b"]),
                                      "does not match its own metadata: the metadata declares input (batch, 1, "
                                      "28, 28) and 2 classes, but the graph answers one such image with shape "
                                      "(1, 10)"),
    "3 channels on a 1-channel graph": (lambda meta: with_meta(meta, in_channels=3),
                                        "does not match its own metadata: the metadata declares input (batch, 3, "
                                        "28, 28)"),
    "a stored size of 200000": (lambda meta: with_meta(meta, data="imagefolder:/x", stored_size=200_000),
                                "stored_size must be in [28, 112], got 200000"),
    "a stored size below the input size": (lambda meta: with_meta(meta, stored_size=27),
                                           "stored_size must be in [28, 112], got 27"),
    "a huge input size": (lambda meta: with_meta(meta, input_size=10**6, stored_size=10**6),
                          "input_size must be in [1, 4096], got 1000000"),
}


@pytest.mark.parametrize("kind", ["onnx", "pt2"])
@pytest.mark.parametrize("case", MODEL_FILE_CASES)
def test_predict_refuses_a_model_file_with_forged_metadata(trained, tmp_path, capsys, decoded_sizes, kind, case):
    forge, message = MODEL_FILE_CASES[case]
    path = model_file(trained, tmp_path, kind, forge(trained["meta"]))
    assert main(["predict", "--model-file", str(path), str(trained["image"])]) == 2
    err = error_line(capsys)
    assert f"'{path}'" in err and message in err, err
    assert decoded_sizes == []  # refused before any image was decoded


@pytest.mark.parametrize("kind", ["onnx", "pt2"])
def test_a_foreign_graph_with_copied_metadata_is_refused(trained, tmp_path, capsys, kind):
    text = json.dumps(trained["meta"])
    if kind == "onnx":  # another graph's input and output names
        path = tmp_path / "foreign.onnx"
        path.write_bytes(onnx_model(text, names=("input", "output")))
        found = "its graph takes 'input' ['batch', 1, 28, 28] and gives 'output' (an alexnet-lab export takes"
    else:  # a module that takes (batch, 2)
        path = pt2_model(None, text, tmp_path / "foreign.pt2", module=torch.nn.Linear(2, 10))
        found = "the graph refuses such an input"
    assert main(["predict", "--model-file", str(path), str(trained["image"])]) == 2
    err = error_line(capsys)
    assert f"Model file '{path}' does not match its own metadata" in err and found in err, err


@pytest.mark.parametrize("kind, name", [("onnx", "model.pt2"), ("pt2", "model.onnx"), ("onnx", "model")])
def test_the_model_file_kind_comes_from_its_content_not_its_name(trained, tmp_path, capsys, kind, name):
    path = model_file(trained, tmp_path, kind, json.dumps(trained["meta"]), name=name)
    assert main(["predict", "--model-file", str(path), str(trained["image"])]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"{trained['image']}: ")


# --- run folders -------------------------------------------------------------------------------------

def rewrite_metrics(run: Path, edit) -> None:
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    (run / "metrics.jsonl").write_bytes(b"\n".join(edit(lines)) + b"\n")


def without_step(line: bytes) -> bytes:
    row = json.loads(line)
    del row["step"]
    return json.dumps(row).encode()


RUN_CASES = {
    "a metrics line that is not an object": (
        lambda run: rewrite_metrics(run, lambda lines: [b"[1, 2]", *lines]),
        "metrics.jsonl' line 1 is damaged or was not written by alexnet-lab: the row must be a dict (a JSON "
        "object), got a list of 2 item(s)"),
    "an unfinished run whose last row lacks its step": (
        lambda run: ((run / "summary.json").unlink(),
                     rewrite_metrics(run, lambda lines: [*lines[:-1], without_step(lines[-1])])),
        "metrics.jsonl' line 2 is damaged or was not written by alexnet-lab: the row lacks step"),
    "a metrics value of the wrong type": (
        lambda run: rewrite_metrics(run, lambda lines: [lines[0].replace(b'"epoch": 0.5', b'"epoch": "half"'),
                                                        *lines[1:]]),
        "metrics.jsonl' line 1 is damaged or was not written by alexnet-lab: the row.epoch must be a number, got "
        "'half'"),
    "non-UTF-8 metrics": (
        lambda run: rewrite_metrics(run, lambda lines: [b"\xff\xfe{}", *lines]),
        "metrics.jsonl' is corrupt at line 1 (not UTF-8 JSON)"),
    "summary steps as text": (
        lambda run: (run / "summary.json").write_text(json.dumps(
            {**json.loads((run / "summary.json").read_text()), "steps": "2"})),
        "summary.json' is damaged or was not written by alexnet-lab: steps must be a whole number, got '2'"),
    "resolved as text": (
        lambda run: (run / "config.json").write_text(json.dumps(
            {**json.loads((run / "config.json").read_text()), "resolved": "cpu"})),
        "config.json' is damaged or was not written by alexnet-lab: resolved must be a dict (a JSON object), "
        "got 'cpu'"),
    "a config value of the wrong type": (
        lambda run: (run / "config.json").write_text(json.dumps(
            {**json.loads((run / "config.json").read_text()), "limit_train": "all"})),
        "config.json' is damaged or was not written by alexnet-lab: limit_train must be a whole number, got 'all'"),
    "a summary.json that is a FIFO": (
        lambda run: ((run / "summary.json").unlink(), os.mkfifo(run / "summary.json")),
        "summary.json' is not a regular file"),
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_report_and_compare_refuse_a_damaged_run_folder_naming_the_file(trained, tmp_path, capsys, case):
    damage, message = RUN_CASES[case]
    run = copy_run(trained["run"], tmp_path / "run", checkpoints=False)
    damage(run)
    for argv in (["report", str(run), "--out", str(tmp_path / "report.html")],
                 ["compare", str(run), "--out", str(tmp_path / "cmp")]):
        assert main(argv) == 2, argv
        err = error_line(capsys)
        assert f"'{run}/{message}" in err, (argv, err)


def test_a_torn_last_metrics_line_is_left_out(trained, tmp_path, capsys):
    run = copy_run(trained["run"], tmp_path / "run", checkpoints=False)
    (run / "summary.json").unlink()  # unfinished: killed while appending its third row
    with open(run / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"epoch": 1.5, "st\xc3')  # torn inside a UTF-8 sequence, too
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    assert "Unfinished (interrupted, or still running): 2 of 2 steps logged." in (tmp_path / "report.html").read_text()


# --- property-based fuzzing --------------------------------------------------------------------------

SPECIAL = [0, -1, 1, 2, 3, 10, 28, 112, 4096, 200_000, 2**31, 2**63, 10**30, 0.5, -0.0, float("nan"),
           float("inf"), "", "lenet", "alexnet", "fashion-mnist", "imagefolder:/x", "cpu", "cuda:0",
           "alexnet-lab-model/1"]
KEYS = ["model", "step", "epoch", "format", "class_names", "module", "updates", "decay", "in_channels",
        "num_classes", "params", "lr", "state", "param_groups", "momentum_buffer", "resolved", "steps"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
    | st.sampled_from(SPECIAL),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6),
                                                                      children, max_size=4),
    max_leaves=10)
tensors = st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype),
                    st.lists(st.integers(0, 6), max_size=4), st.sampled_from([torch.float32, torch.int64, torch.uint8]))
checkpoint_values = st.one_of(json_values, tensors, st.just(DELETE),
                              st.lists(tensors | json_values, max_size=3).map(tuple))

MODEL_FIELDS = [("model_name",), ("model_kwargs",), ("model_kwargs", "in_channels"), ("model_kwargs", "num_classes"),
                ("config",), ("config", "model"), ("config", "resize"), ("config", "lr"), ("config", "device"),
                ("config", "channels"), ("config", "data"), ("config", "ema_decay"), ("config", "augment"),
                ("config", "preset"), ("config", "unknown"), ("class_names",), ("class_names", 0),
                ("model_state",), ("model_state", "0.weight"), ("ema_state",), ("ema_state", "module"),
                ("ema_state", "decay"), ("ema_state", "updates"), ("run_state",), ("run_state", "step"),
                ("run_state", "best_test_acc"), ("run_state", "metrics"), ("run_state", "metrics", -1, "test_acc"),
                ("versions",), ("versions", "torch"), ("data_fingerprint",), ("data_fingerprint", "test"),
                ("evaluated_with",)]
RESUME_FIELDS = MODEL_FIELDS + [
    ("optimizer_state",), ("optimizer_state", "state"), ("optimizer_state", "state", 0),
    ("optimizer_state", "param_groups"), ("optimizer_state", "param_groups", 0, "params"),
    ("optimizer_state", "param_groups", 0, "momentum"), ("optimizer_state", "param_groups", 0, "lr"),
    ("scheduler_state",), ("scheduler_state", "last_epoch"),
    ("scheduler_state", "lr_lambdas"), ("scheduler_state", "base_lrs"), ("scaler_state",),
    ("scaler_state", "scale"), ("rng",), ("rng", "python"), ("rng", "python", 2), ("rng", "numpy"),
    ("rng", "numpy", "pos"), ("rng", "numpy", "key"), ("rng", "torch"), ("rng", "cuda"), ("data_fingerprint",),
    ("data_fingerprint", "train", "examples"), ("run_state", "epoch"), ("run_state", "batch"),
    ("run_state", "examples"), ("run_state", "epoch_loss_sum"), ("run_state", "metrics", 0, "step"),
    ("config", "epochs"), ("config", "momentum"), ("config", "batch_size"), ("world_size",)]


# The type each checkpoint field must have, as an independent table (not the program's schema): a forged value
# of another type, or the field deleted where it is required, must be refused. Fields not listed may take
# any value (they are optional, or read leniently: an older file's missing record).
FIELD_TYPES = {("model_name",): str, ("model_kwargs",): (dict, type(None)), ("model_kwargs", "in_channels"): int,
               ("model_kwargs", "num_classes"): int, ("config",): dict, ("config", "model"): str,
               ("config", "resize"): (int, type(None)), ("config", "lr"): (int, float), ("config", "device"): str,
               ("config", "channels"): (int, type(None)), ("config", "data"): str,
               ("config", "ema_decay"): (int, float), ("config", "augment"): (str, bool), ("config", "preset"): str,
               ("config", "unknown"): (), ("class_names",): (list, tuple, type(None)), ("class_names", 0): str,
               ("model_state",): dict, ("model_state", "0.weight"): torch.Tensor, ("run_state",): dict,
               ("run_state", "step"): int, ("run_state", "best_test_acc"): (int, float),
               ("run_state", "metrics"): list, ("versions",): dict, ("versions", "torch"): str}
REQUIRED = {("model_name",), ("config",), ("config", "model"), ("model_state",), ("model_state", "0.weight")}


def must_refuse(path: tuple, value) -> bool:
    """Whether the table above says a checkpoint with `value` at `path` cannot be a valid one."""
    if value is DELETE:
        return path in REQUIRED
    kinds = FIELD_TYPES.get(path)
    if kinds is None:
        return False
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool):  # not a number here, though Python counts it as an int
        return bool not in kinds
    return not isinstance(value, kinds)


def assert_clear_outcome(argv: list[str], capsys, *, refuse: bool = False) -> int:
    """The command succeeds, or fails with one error line; any other exception fails the test itself.
    `refuse`: the file is invalid, so success would be a forged file accepted silently."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code in ((2,) if refuse else (0, 2)), (argv, code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.strip().splitlines()[-1].startswith(f"alexnet-lab {argv[0]}: error: "), err
    return code


@FUZZ
@given(path=st.sampled_from(MODEL_FIELDS), value=checkpoint_values, command=st.sampled_from(["predict", "evaluate"]))
def test_fuzzed_checkpoint_fields_give_a_clear_error_or_a_result(trained, tmp_path, capsys, path, value, command):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        forged = forge_checkpoint(trained["run"] / "checkpoint.pt", folder / "c.pt", path, value)
    except (KeyError, IndexError, TypeError):  # the path does not exist in this payload: not an example
        reject()
    argv = {"predict": ["predict", "--checkpoint", str(forged), "--device", "cpu", str(trained["image"])],
            "evaluate": ["evaluate", "--checkpoint", str(forged), "--data-dir", str(trained["data"]),
                         "--device", "cpu", "--out", str(folder / "out")]}[command]
    assert_clear_outcome(argv, capsys, refuse=must_refuse(path, value))
    shutil.rmtree(folder)


@settings(FUZZ, max_examples=examples(30))
@given(path=st.sampled_from(RESUME_FIELDS), value=checkpoint_values)
def test_fuzzed_checkpoint_fields_give_a_clear_error_or_a_resumed_run(trained, tmp_path, capsys, path, value):
    run = copy_run(trained["run"], Path(tempfile.mkdtemp(dir=tmp_path)) / "run")
    try:
        forge_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt", path, value)
    except (KeyError, IndexError, TypeError):
        reject()
    assert_clear_outcome(["train", "--resume", str(run), "--epochs", "2", "--progress", "none", "--no-report"],
                         capsys, refuse=must_refuse(path, value))
    shutil.rmtree(run.parent)


META_FIELDS = ["format", "model", "class_names", "input_size", "in_channels", "data", "stored_size",
               "center_crop", "input", "unknown"]


@FUZZ
@given(kind=st.sampled_from(["onnx", "pt2"]), field=st.sampled_from([None, *META_FIELDS]),
       value=json_values | st.just(DELETE), text=st.text(max_size=30))
def test_fuzzed_model_file_metadata_gives_a_clear_error_or_a_prediction(trained, tmp_path, capsys, decoded_sizes,
                                                                        kind, field, value, text):
    """field None: the metadata is replaced by random text; otherwise one field by a random value."""
    meta_text = text if field is None else with_meta(trained["meta"], **{field: value})
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = model_file(trained, folder, kind, meta_text)
    assert_clear_outcome(["predict", "--model-file", str(path), str(trained["image"])], capsys)
    shutil.rmtree(folder)


RUN_FIELDS = [("config.json", None), ("config.json", "model"), ("config.json", "resolved"),
              ("config.json", "limit_train"), ("config.json", "data"), ("config.json", "preset"),
              ("config.json", ("resolved", "total_steps")), ("config.json", ("resolved", "start_step")),
              ("config.json", ("resolved", "environment")), ("config.json", ("resolved", "train_examples")),
              ("summary.json", None), ("summary.json", "steps"), ("summary.json", "epochs"),
              ("summary.json", "test_acc"), ("summary.json", "reached_target"), ("summary.json", "target_accuracy"),
              ("metrics.jsonl", 0), ("metrics.jsonl", 1), ("metrics.jsonl", (0, "step")),
              ("metrics.jsonl", (1, "epoch")), ("metrics.jsonl", (1, "test_acc")), ("metrics.jsonl", (1, "train_loss"))]


def damage_run(run: Path, name: str, field, value) -> None:
    """Set one field of a run file (None: the whole file; an int: a metrics line) to `value`."""
    path = run / name
    if name == "metrics.jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if value is DELETE and isinstance(field, int):
            del rows[field]
        else:
            set_field(rows, field if isinstance(field, tuple) else (field,), value)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif field is None:
        path.write_text(json.dumps(None if value is DELETE else value))
    else:
        data = json.loads(path.read_text())
        set_field(data, field if isinstance(field, tuple) else (field,), value)
        path.write_text(json.dumps(data))


@FUZZ
@given(target=st.sampled_from(RUN_FIELDS), value=json_values | st.just(DELETE), unfinished=st.booleans())
def test_fuzzed_run_folder_files_give_a_clear_error_or_a_report(trained, tmp_path, capsys, target, value,
                                                                unfinished):
    run = copy_run(trained["run"], Path(tempfile.mkdtemp(dir=tmp_path)) / "run", checkpoints=False)
    if unfinished:
        (run / "summary.json").unlink()
    try:
        damage_run(run, *target, value)
    except (KeyError, IndexError, TypeError, FileNotFoundError):
        reject()
    assert_clear_outcome(["compare", str(run), "--out", str(run / "cmp")], capsys)
    assert_clear_outcome(["report", str(run), "--out", str(run / "report.html")], capsys)
    shutil.rmtree(run.parent)
