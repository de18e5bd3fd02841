"""Export: ONNX (run by onnxruntime), torch.export (.pt2), safetensors and TorchScript files give PyTorch's
outputs, carry the class names and input size, are told apart by their content, and `predict --model-file`
agrees with `predict --checkpoint`; forged safetensors metadata and .pt2 archives are refused."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import zipfile
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

CLASSES = ("circle", "square", "star")
ROOT = Path(__file__).resolve().parents[1]
NAMES = {"onnx": "model.onnx", "pt2": "model.pt2", "safetensors": "model.safetensors", "torchscript": "model.pt"}


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
                "safetensors": "safetensors (alexnet_lab.models)", "torchscript": "torchscript"}
    misleading = dict(zip(NAMES, ["model.pt2", "model.onnx", "model.pt", "model.safetensors"]))
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
    assert "is a zip archive but neither a TorchScript nor a torch.export (.pt2) model" in err
    assert "a checkpoint goes to --checkpoint" in err and "Traceback" not in err


def test_torchscript_export_prints_a_deprecation_note_pointing_to_pt2(exports):
    note = "TorchScript is deprecated in PyTorch (torch.jit); --format torchscript will be removed"
    assert note in exports["torchscript"][2] and "Use --format pt2 (torch.export) instead" in exports["torchscript"][2]
    assert all("deprecated" not in err for fmt, (_, _, err) in exports.items() if fmt != "torchscript")


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


def rewrite_member(source: Path, target: Path, suffix: str, edit) -> Path:
    """A copy of the zip `source` whose member ending in `suffix` is `edit(bytes)` (added when absent)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        names = zin.namelist()
        top = names[0].split("/")[0]
        for name in names:
            data = zin.read(name)
            zout.writestr(name, edit(data) if name.endswith(suffix) else data)
        if not any(name.endswith(suffix) for name in names):
            zout.writestr(f"{top}/{suffix}", edit(b""))
    return target


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
        "it has the shape expression \"__import__('os')"),
    "pickled weights": ("data/weights/model_weights_config.json",
                        edit_json(lambda c: first_weight(c).update(use_pickle=True)), "is stored as a pickle"),
    "a legacy weights pickle": ("data/weights/model.pt", lambda data: b"\x80\x02N.",
                                "it holds data/weights/model.pt, which would be unpickled"),
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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save
def test_model_files_not_from_export_are_refused(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage")
    with pytest.raises(UserError, match="is not a readable ONNX model"):
        ModelFile(junk)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(UserError, match="was not written by alexnet-lab export"):
        ModelFile(plain)
    program = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.rand(1, 2),)), str(program))
    with pytest.raises(UserError, match="was not written by alexnet-lab export"):
        ModelFile(program)
