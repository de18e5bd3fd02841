"""Exporting a trained model for use outside this package (ONNX, TorchScript), and running the files.

Each file carries, as metadata, what a user of the file needs: the class names, the input size and
channels, and how images become inputs (`inference.metadata`). `load_model_file` runs either kind of file
(ONNX through onnxruntime) behind one call: float32 (B, C, S, S) in [0, 1] -> logits (B, classes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from alexnet_lab.engine.inference import METADATA_FORMAT
from alexnet_lab.errors import UserError

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "alexnet_lab"            # ONNX: metadata_props key; TorchScript: extra file "alexnet_lab.json"
ATOL, RTOL = 1e-4, 1e-3                 # the export check: |exported - pytorch| <= ATOL + RTOL * |pytorch|


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters' warnings (torchvision ops not registered, deprecations) are not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _atomic_path(out: Path):
    """A temporary path beside `out`, renamed to `out` when the body succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def export_model(model: nn.Module, meta: dict, fmt: str, out: str | os.PathLike) -> Path:
    """Write `model` (eval mode, CPU, fp32) as `fmt` with `meta`; the batch dimension stays free.

    ONNX uses torch.onnx's current exporter (torch.export + onnxscript, `dynamo=True`) at its default
    opset (20 with torch 2.13).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    out = Path(out)
    model = model.to("cpu", torch.float32).eval()
    example = torch.rand(2, meta["in_channels"], meta["input_size"], meta["input_size"])
    text = json.dumps(meta)
    try:
        with _quiet_exporter(), _atomic_path(out) as tmp:
            if fmt == "onnx":
                program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                            output_names=["logits"], verbose=False,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},))
                program.model.metadata_props[METADATA_KEY] = text
                program.save(str(tmp))
            else:
                traced = torch.jit.trace(model, example)
                torch.jit.save(traced, str(tmp), _extra_files={f"{METADATA_KEY}.json": text})
    except OSError as exc:
        raise UserError(f"Cannot write '{out}': {exc.strerror or exc}.") from None
    return out


class ModelFile:
    """An exported model, callable as float32 (B, C, S, S) -> logits (B, classes) on the CPU."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"Model file '{self.path}' does not exist. Write one with alexnet-lab export.")
        if self.path.suffix.lower() == ".onnx":
            self._load_onnx()
        else:
            self._load_torchscript()
        if self.meta.get("format") != METADATA_FORMAT:
            raise UserError(f"'{self.path}' was not written by alexnet-lab export (no {METADATA_FORMAT} metadata).")

    def _load_onnx(self) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(f"'{self.path}' is not a readable ONNX model ({str(exc).splitlines()[0]}).") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = json.loads(props.get(METADATA_KEY, "{}"))
        self.kind = "onnx (onnxruntime)"

    def _load_torchscript(self) -> None:
        extra = {f"{METADATA_KEY}.json": ""}
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra).eval()
        except Exception as exc:  # noqa: BLE001 - torch.jit raises RuntimeError and others on foreign files
            raise UserError(f"'{self.path}' is not a readable TorchScript model ({str(exc).splitlines()[0]}). "
                            "Pass a .onnx or a TorchScript .pt file written by alexnet-lab export.") from None
        self.meta = json.loads(extra[f"{METADATA_KEY}.json"] or "{}")
        self.kind = "torchscript"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().to("cpu", torch.float32).contiguous()
        if self.kind.startswith("onnx"):
            (logits,) = self.session.run(["logits"], {"images": images.numpy()})
            return torch.from_numpy(logits)
        with torch.no_grad():
            return self.module(images)


def compare_outputs(model: nn.Module, exported: ModelFile, images: torch.Tensor) -> dict:
    """Run PyTorch and the exported file on the same inputs: largest difference, tolerance, top-1 agreement."""
    with torch.no_grad():
        expected = model.to("cpu", torch.float32).eval()(images.float())
    got = exported(images)
    excess = (got - expected).abs() - (ATOL + RTOL * expected.abs())
    return {"images": len(images), "max_abs_diff": float((got - expected).abs().max()),
            "within_tolerance": bool((excess <= 0).all()),
            "top1_agree": int((got.argmax(1) == expected.argmax(1)).sum()),
            "tolerance": f"|exported - pytorch| <= {ATOL:g} + {RTOL:g} * |pytorch| for every logit"}
