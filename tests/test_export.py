"""Export: ONNX (run by onnxruntime), torch.export (.pt2) and safetensors files give PyTorch's outputs, carry
the class names and input size, are told apart by their content, and `predict --model-file` agrees with
`predict --checkpoint`; forged safetensors metadata and .pt2 archives, and TorchScript, are refused; a full
disk is one clear error for every format."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from alexnet_lab import UserError
from alexnet_lab.cli import main
from alexnet_lab.engine import make_config, fit
from alexnet_lab.engine.export import ModelFile
from alexnet_lab.engine.inference import load_trained
from alexnet_lab.engine.run_dir import RunWriter
from fakedata import one_thread
from imagedata import make_shapes
from zipdata import rewrite_member

CLASSES = ("circle", "square", "star")
ROOT = Path(__file__).resolve().parents[1]
NAMES = {"onnx": "model.onnx", "pt2": "model.pt2", "safetensors": "model.safetensors"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A speednet (BatchNorm: eval mode matters) trained briefly on a generated 3-class folder."""
    base = tmp_path_factory.mktemp("export")
    root = make_shapes(base / "shapes", per_class=8, classes=CLASSES)
    config = make_config("d2l", model="speednet", data=f"imagefolder:{root}", epochs=2, batch_size=8,
                         lr=0.05, momentum=0.9, init="default", device="cpu")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        (base / "run").mkdir()
        fit(config, [RunWriter(base / "run", config.to_dict())])
    return base / "run" / "checkpoint.pt", root


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory) -> dict:
    """Each format exported once by the CLI: {format: (file, stdout, stderr)}."""
    checkpoint, _ = trained
    folder = tmp_path_factory.mktemp("exports")
    result = {}
    for fmt, name in NAMES.items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), one_thread():
            assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(folder / name),
                         "--check-images", "5"]) == 0, err.getvalue()
        result[fmt] = (folder / name, out.getvalue(), err.getvalue())
    return result


def reference_logits(checkpoint, x: torch.Tensor) -> torch.Tensor:
    model, _, _ = load_trained(checkpoint, torch.device("cpu"))
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("fmt", list(NAMES))
def test_export_round_trip_matches_pytorch_and_carries_metadata(trained, exports, fmt):
    checkpoint, _ = trained
    path, text, _ = exports[fmt]
    assert "PyTorch outputs match" in text and "same top-1 class for 5/5 images" in text
    exported = ModelFile(path)
    assert exported.meta["class_names"] == list(CLASSES)
    assert (exported.meta["input_size"], exported.meta["in_channels"]) == (28, 3)
    assert exported.meta["model_kwargs"] == {"in_channels": 3, "num_classes": 3}
    assert exported.meta["normalization"].startswith("none: pixel values / 255")
    x = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))  # another batch size than exported
    torch.testing.assert_close(exported(x), reference_logits(checkpoint, x), atol=1e-4, rtol=1e-3)
    assert exported(x[:1]).shape == (1, 3)


def test_the_readme_lines_load_a_safetensors_file_into_build_model(trained, exports, tmp_path, monkeypatch):
    """The README's lines, run as written, on a copy named as the README names it."""
    checkpoint, _ = trained
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (code,) = [block for block in blocks if "load_file(" in block]
    assert len([line for line in code.splitlines() if line and not line.startswith(("import", "from"))]) == 3
    shutil.copy(exports["safetensors"][0], tmp_path / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the README's own code
    model = namespace["model"]
    assert isinstance(model, torch.nn.Module) and not model.training
    x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_logits(checkpoint, x), atol=0, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "safetensors"])
def test_predict_from_an_exported_file_agrees_with_predict_from_the_checkpoint(trained, exports, capsys, fmt):
    checkpoint, root = trained
    images = [str(p) for p in sorted(root.glob("*/*"))[::5]]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", *images]) == 0
    from_checkpoint = capsys.readouterr().out
    assert main(["predict", "--model-file", str(exports[fmt][0]), *images]) == 0
    from_file = capsys.readouterr().out
    assert from_file == from_checkpoint and from_file.count("\n") == len(images)
    assert any(name in from_file for name in CLASSES)


def test_predict_json_is_one_object_with_the_top_classes_most_probable_first(trained, exports, capsys):
    _, root = trained
    images = [str(p) for p in sorted(root.glob("*/*"))[::7]]
    model_file = str(exports["safetensors"][0])
    capsys.readouterr()
    assert main(["predict", "--model-file", model_file, "--top", "3", "--json", *images]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "speednet" and result["source"] == model_file
    assert [item["image"] for item in result["predictions"]] == images
    assert main(["predict", "--model-file", model_file, "--top", "2", *images]) == 0
    lines = capsys.readouterr().out.splitlines()
    for item, line in zip(result["predictions"], lines, strict=True):
        top = item["top"]
        probabilities = [guess["probability"] for guess in top]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1)
        assert [CLASSES[guess["index"]] for guess in top] == [guess["class"] for guess in top]
        assert line == f"{item['image']}: " + ", ".join(f"{g['class']} {g['probability']:.1%}" for g in top[:2])


def test_the_model_file_kind_comes_from_its_content_for_every_format(exports, tmp_path):
    expected = {"onnx": "onnx (onnxruntime)", "pt2": "pt2 (torch.export)",
                "safetensors": "safetensors (alexnet_lab.models)"}
    misleading = dict(zip(NAMES, ["model.pt2", "model.safetensors", "model.onnx"]))
    for fmt, (path, _, _) in exports.items():
        for name in (misleading[fmt], "model"):
            copy = tmp_path / fmt / name
            copy.parent.mkdir(exist_ok=True)
            shutil.copy(path, copy)
            assert ModelFile(copy).kind == expected[fmt], (fmt, name)


def test_a_zip_archive_that_is_not_a_model_is_refused_naming_the_checkpoint_flag(trained, capsys):
    checkpoint, root = trained
    image = str(next(root.glob("*/*")))
    assert main(["predict", "--model-file", str(checkpoint), image]) == 2
    err = capsys.readouterr().err
    assert "is a zip archive but not a torch.export (.pt2) model" in err
    assert "a checkpoint goes to --checkpoint" in err and "Traceback" not in err


def test_export_format_torchscript_is_answered_with_one_line_naming_pt2_and_onnx(trained, tmp_path, capsys):
    checkpoint, _ = trained
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format torchscript was removed" in err
    assert "--format pt2" in err and "--format onnx" in err and not out.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, to make the file
def test_a_torchscript_model_file_is_refused_as_code_without_loading_it(trained, tmp_path, capsys, monkeypatch):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    assert main(["predict", "--model-file", str(path), str(next(trained[1].glob("*/*")))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it is a TorchScript model, which is code" in err and f"'{path}'" in err
    assert "Export the model again with alexnet-lab export (--format onnx, pt2 or safetensors)" in err


def forged_safetensors(source: Path, target: Path, edit) -> Path:
    """`source`'s weights saved (by safetensors itself) with its metadata passed through `edit`."""
    from safetensors.torch import load_file, safe_open, save_file

    with safe_open(str(source), framework="pt") as fh:
        metadata = fh.metadata()
    meta = json.loads(metadata["alexnet_lab"])
    edited = edit(meta)
    save_file(load_file(str(source)), str(target),
              metadata=None if edited is None else {"format": "pt", "alexnet_lab": json.dumps(edited)})
    return target


SAFETENSORS_CASES = {
    "an unknown model name": (lambda m: {**m, "model": "resnet50"}, "model must be one of"),
    "no build options": (lambda m: {k: v for k, v in m.items() if k != "model_kwargs"},
                         "its metadata lacks model_kwargs"),
    "a class count that is text": (lambda m: {**m, "model_kwargs": {"in_channels": 3, "num_classes": "3"}},
                                   "model_kwargs.num_classes must be a whole number, got '3'"),
    "7 input channels": (lambda m: {**m, "model_kwargs": {"in_channels": 7, "num_classes": 3}},
                         "model_kwargs.in_channels must be one of 1, 3, got 7"),
    "an option the model does not take": (lambda m: {**m, "model_kwargs": {**m["model_kwargs"], "depth": 50}},
                                          "model_kwargs has unknown key(s) 'depth'"),
    "more class names than classes": (lambda m: {**m, "class_names": [*m["class_names"], "ring"]},
                                      "model_kwargs.num_classes is 3 but class_names has 4 names"),
    "a class count not matching the weights": (
        lambda m: {**m, "class_names": m["class_names"][:2], "model_kwargs": {"in_channels": 3, "num_classes": 2}},
        "does not match model 'speednet' built with {'in_channels': 3, 'num_classes': 2} (13.weight has shape (3, 576), "
        "the model needs (2, 576)"),
    "no metadata": (lambda m: None, "was not written by alexnet-lab export (no alexnet-lab-model/1 metadata)"),
}


@pytest.mark.parametrize("case", SAFETENSORS_CASES)
def test_predict_refuses_a_safetensors_file_with_forged_metadata(trained, exports, tmp_path, capsys, case):
    edit, message = SAFETENSORS_CASES[case]
    path = forged_safetensors(exports["safetensors"][0], tmp_path / "forged.safetensors", edit)
    image = str(next(trained[1].glob("*/*")))
    assert main(["predict", "--model-file", str(path), image]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"'{path}'" in err and message in err, err


def edit_json(change):
    def edit(data: bytes) -> bytes:
        value = json.loads(data)
        change(value)
        return json.dumps(value).encode()
    return edit


def first_node(program: dict) -> dict:
    return program["graph_module"]["graph"]["nodes"][0]


def first_weight(config: dict) -> dict:
    return next(iter(config["config"].values()))


PT2_CASES = {
    "a node that calls torch.save": (
        "models/model.json", edit_json(lambda p: first_node(p).update(target="torch.save")),
        "its graph calls 'torch.save', not an aten operator"),
    "a node that opens a file": (
        "models/model.json", edit_json(lambda p: first_node(p).update(target="torch.ops.aten.from_file.default")),
        "its graph calls 'torch.ops.aten.from_file.default'"),
    "guard code": ("models/model.json", edit_json(lambda p: p.update(guards_code=["import os"])),
                   "it holds guard code (Python source)"),
    "a shape expression with Python in it": (
        "models/model.json", lambda data: data.replace(b"Symbol('s", b"__import__('os').getcwd() + Symbol('s"),
        "it has the shape expression '__import__('os')"),
    "pickled weights": ("data/weights/model_weights_config.json",
                        edit_json(lambda c: first_weight(c).update(use_pickle=True)), "is stored as a pickle"),
    "a legacy weights pickle": ("data/weights/model.pt", lambda data: b"\x80\x02N.",
                                "it holds an entry named 'data/weights/model.pt', which alexnet-lab export never "
                                "writes"),
}


@pytest.mark.parametrize("case", PT2_CASES)
def test_a_forged_pt2_archive_is_refused_before_torch_export_reads_it(trained, exports, tmp_path, capsys,
                                                                       monkeypatch, case):
    member, edit, message = PT2_CASES[case]
    path = rewrite_member(exports["pt2"][0], tmp_path / "forged.pt2", member, edit)

    def load(*args, **kwargs):
        raise AssertionError("torch.export.load was called on a forged archive")

    monkeypatch.setattr(torch.export, "load", load)
    image = str(next(trained[1].glob("*/*")))
    assert main(["predict", "--model-file", str(path), image]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"'{path}' is not a torch.export model as alexnet-lab export writes it" in err
    assert message in err, err


def test_model_files_not_from_export_are_refused(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage")
    with pytest.raises(UserError, match="is not a readable ONNX model"):
        ModelFile(junk)
    program = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.rand(1, 2),)), str(program))
    with pytest.raises(UserError, match="was not written by alexnet-lab export"):
        ModelFile(program)


# --- a full disk ----------------------------------------------------------------------------------------

def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_disk_full_message(text: str, out: Path) -> None:
    assert f"Cannot write '{out}': No space left on device. The file needs about " in text, text
    assert "MiB (the model's weights)" in text
    assert "Free disk space or choose another --out; nothing was written" in text


@pytest.mark.parametrize("fmt", list(NAMES))
def test_a_disk_too_full_for_the_weights_is_refused_before_exporting(trained, tmp_path, capsys, monkeypatch, fmt):
    checkpoint, _ = trained
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=4096))
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: pytest.fail("exported although the disk is full"))
    out = tmp_path / "out" / NAMES[fmt]
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0.0 MiB are free there" in err
    assert_disk_full_message(err, out)
    assert leftovers(out.parent) == []


def fill_while_writing(fmt: str, monkeypatch, wrapped: bool) -> None:
    """The disk fills while `fmt`'s file is written: ONNX's own writer raises, or (pt2, safetensors) the
    write through files.py; `wrapped`: as torch's zip writer reports it, a RuntimeError around the OSError."""
    def full(*args, **kwargs):
        if fmt == "onnx":
            Path(args[1]).write_bytes(b"x" * 100)  # a partly written file
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            if wrapped:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from None
            raise

    if fmt == "onnx":
        monkeypatch.setattr(torch.onnx.ONNXProgram, "save", full)
    elif wrapped:
        monkeypatch.setattr(torch.export, "save", full)
    else:
        import fakedata
        monkeypatch.setattr(os, "fdopen", fakedata.FullDisk(files_ok=0))


@pytest.mark.parametrize("fmt, wrapped", [("onnx", False), ("onnx", True), ("pt2", False), ("pt2", True),
                                          ("safetensors", False)])  # safetensors' writer is Python's
def test_a_disk_that_fills_while_writing_is_one_clear_error_and_leaves_nothing(trained, tmp_path, monkeypatch,
                                                                             fmt, wrapped):
    from alexnet_lab.engine.export import export_model
    from alexnet_lab.engine.inference import metadata

    model, config, payload = load_trained(trained[0], torch.device("cpu"))
    out = tmp_path / NAMES[fmt]
    fill_while_writing(fmt, monkeypatch, wrapped)
    with pytest.raises(UserError) as err, one_thread():
        export_model(model, metadata(config, payload), fmt, out)
    assert_disk_full_message(str(err.value), out)
    assert leftovers(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount rights: else the test is skipped), unmounted afterwards."""
    folder = tmp_path / "small"
    folder.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs to fill ({exc}); the monkeypatched tests cover the code path")
    yield folder
    subprocess.run(["umount", str(folder)], check=False, capture_output=True, timeout=30)


@pytest.mark.parametrize("fmt", list(NAMES))
def test_export_to_a_really_full_disk_is_one_clear_error_and_leaves_nothing(trained, small_disk, capsys,
                                                                            monkeypatch, fmt):
    """A real full tmpfs: first nearly full (refused before exporting), then with the check told there is
    room, so that the write itself meets ENOSPC (torch's own zip writer used to abort the process there)."""
    checkpoint, _ = trained
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(bytes(free - 16 * 1024))
    out = small_disk / NAMES[fmt]
    argv = ["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out), "--check-images", "1"]
    assert main(argv) == 2
    assert_disk_full_message(capsys.readouterr().err, out)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=2**40))
    with one_thread():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert_disk_full_message(err, out)
    assert "Traceback" not in err and leftovers(small_disk) == ["filler"]
