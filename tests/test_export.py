"""Export: ONNX (run by onnxruntime) and TorchScript files give PyTorch's outputs, carry the class names
and input size, and `predict --model-file` agrees with `predict --checkpoint`."""

from __future__ import annotations

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


@pytest.mark.parametrize("fmt, name", [("onnx", "model.onnx"), ("torchscript", "model.pt")])
def test_export_round_trip_matches_pytorch_and_carries_metadata(trained, tmp_path, capsys, fmt, name):
    checkpoint, _ = trained
    out = tmp_path / name
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out),
                 "--check-images", "5"]) == 0
    text = capsys.readouterr().out
    assert "PyTorch outputs match" in text and "same top-1 class for 5/5 images" in text
    exported = ModelFile(out)
    assert exported.meta["class_names"] == list(CLASSES)
    assert (exported.meta["input_size"], exported.meta["in_channels"]) == (28, 3)
    model, _, _ = load_trained(checkpoint, torch.device("cpu"))
    x = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))  # another batch size than exported
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(exported(x), expected, atol=1e-4, rtol=1e-3)


def test_predict_from_onnx_agrees_with_predict_from_the_checkpoint(trained, tmp_path, capsys):
    checkpoint, root = trained
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(onnx_file)]) == 0
    images = [str(p) for p in sorted(root.glob("*/*"))[::5]]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", *images]) == 0
    from_checkpoint = capsys.readouterr().out
    assert main(["predict", "--model-file", str(onnx_file), *images]) == 0
    from_onnx = capsys.readouterr().out
    assert from_onnx == from_checkpoint and from_onnx.count("\n") == len(images)
    assert any(name in from_onnx for name in CLASSES)


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
