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
import warnings
from pathlib import Path

import torch
from torch import nn

from alexnet_lab import files
from alexnet_lab.engine.schema import check_model_metadata
from alexnet_lab.errors import UserError

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "alexnet_lab"            # ONNX: metadata_props key; TorchScript: extra file "alexnet_lab.json"
ZIP_MAGIC = b"PK\x03\x04"               # TorchScript files are zip archives; anything else is read as ONNX
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
        out.parent.mkdir(parents=True, exist_ok=True)
        with _quiet_exporter(), files.atomic_path(out) as tmp:
            if fmt == "onnx":
                program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                            output_names=["logits"], verbose=False,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},))
                program.model.metadata_props[METADATA_KEY] = text
                program.save(str(tmp))
            else:
                traced = torch.jit.trace(model, example)
                torch.jit.save(traced, str(tmp), _extra_files={f"{METADATA_KEY}.json": text})
    except OSError as exc:  # the folder could not be made; the file's own failures are WriteErrors
        raise files.WriteError(out, exc) from None
    return out


class ModelFile:
    """An exported model, callable as float32 (B, C, S, S) -> logits (B, classes) on the CPU."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"Model file '{self.path}' does not exist. Write one with alexnet-lab export.")
        try:  # the kind comes from the content, not the name: TorchScript is a zip archive
            with open(self.path, "rb") as fh:
                is_zip = fh.read(4) == ZIP_MAGIC
        except OSError as exc:
            raise UserError(f"Cannot read model file '{self.path}': {exc.strerror}.") from None
        meta_text = self._load_torchscript() if is_zip else self._load_onnx()
        self.meta = check_model_metadata(meta_text, self.path)
        self._check_graph()

    def _load_onnx(self) -> str | None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(f"'{self.path}' is not a readable ONNX model ({_reason(exc)}).") from None
        self.kind = "onnx (onnxruntime)"
        return self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)

    def _load_torchscript(self) -> bytes | str:
        extra = {f"{METADATA_KEY}.json": ""}
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra).eval()
        except Exception as exc:  # noqa: BLE001 - torch.jit raises RuntimeError and others on foreign files
            raise UserError(f"'{self.path}' is not a readable TorchScript model ({_reason(exc)}). "
                            "Pass a .onnx or a TorchScript .pt file written by alexnet-lab export.") from None
        self.kind = "torchscript"
        return extra[f"{METADATA_KEY}.json"]

    def _check_graph(self) -> None:
        """The metadata must describe the graph in the file: one (1, C, S, S) float32 input of zeros gives
        (1, classes) logits. A graph with metadata copied from another model is refused here, before
        any image is decoded at the metadata's size."""
        channels, size, classes = self.meta["in_channels"], self.meta["input_size"], len(self.meta["class_names"])
        declared = f"input (batch, {channels}, {size}, {size}) and {classes} classes"
        if self.kind.startswith("onnx"):
            inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
            shape = inputs[0].shape if len(inputs) == 1 else []
            if ([i.name for i in inputs] != ["images"] or "logits" not in [o.name for o in outputs]
                    or len(shape) != 4 or any(isinstance(dim, int) and dim != want
                                              for dim, want in zip(shape[1:], (channels, size, size)))):
                self._mismatch(declared, "its graph takes " + ", ".join(f"'{i.name}' {i.shape}" for i in inputs)
                               + " and gives " + ", ".join(f"'{o.name}'" for o in outputs)
                               + " (an alexnet-lab export takes 'images' and gives 'logits')")
        try:
            logits = self(torch.zeros(1, channels, size, size))
        except Exception as exc:  # noqa: BLE001 - onnxruntime and TorchScript raise their own types
            self._mismatch(declared, f"the graph refuses such an input ({_reason(exc)[:200]})")
        if not (isinstance(logits, torch.Tensor) and logits.is_floating_point()
                and tuple(logits.shape) == (1, classes)):
            got = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
            self._mismatch(declared, f"the graph answers one such image with {got}")

    def _mismatch(self, declared: str, found: str):
        raise UserError(f"Model file '{self.path}' does not match its own metadata: the metadata declares "
                        f"{declared}, but {found}. The metadata was edited or copied from another model; "
                        "export the model again with alexnet-lab export.")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().to("cpu", torch.float32).contiguous()
        if self.kind.startswith("onnx"):
            (logits,) = self.session.run(["logits"], {"images": images.numpy()})
            return torch.from_numpy(logits)
        with torch.no_grad():
            return self.module(images)


def _reason(exc: Exception) -> str:
    """The first non-empty line of a loader's error, else its type: torch.jit's refusal of a pickle
    naming code opens with an empty line ("\nUnknown type name 'posix.system':\n...")."""
    lines = [line.strip().rstrip(":") for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


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
