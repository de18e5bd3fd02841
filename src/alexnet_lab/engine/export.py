"""Exporting a trained model for use outside this package (ONNX, torch.export, safetensors weights,
TorchScript until its removal), and running the files.

Each file carries, as metadata, what a user of the file needs: the model and its build options, the class
names, the input size and channels, and how images become inputs (`inference.metadata`). `ModelFile` runs
every kind of file (ONNX through onnxruntime) behind one call: float32 (B, C, S, S) in [0, 1] -> logits
(B, classes); the kind comes from the file's content, not its name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from alexnet_lab import files
from alexnet_lab.engine.archives import PT2, TORCHSCRIPT, check_pt2, weights_only_loads, zip_kind
from alexnet_lab.engine.checkpoint import state_problems
from alexnet_lab.engine.schema import check_model_build, check_model_metadata
from alexnet_lab.errors import UserError

FORMATS = ("onnx", "pt2", "safetensors", "torchscript")
DEPRECATED = {"torchscript": "TorchScript is deprecated in PyTorch (torch.jit); --format torchscript will be "
                             "removed in the next alexnet-lab release. Use --format pt2 (torch.export) instead; "
                             "predict --model-file keeps reading TorchScript files until then."}
# The metadata, one JSON text: ONNX metadata_props key; TorchScript and pt2: extra file "alexnet_lab.json";
# safetensors: __metadata__ key (safetensors metadata maps text to text).
METADATA_KEY = "alexnet_lab"
ZIP_MAGIC = b"PK\x03\x04"               # TorchScript and pt2 files are zip archives (engine/archives.py)
ATOL, RTOL = 1e-4, 1e-3                 # the export check: |exported - pytorch| <= ATOL + RTOL * |pytorch|
FILE_ADVICE = ("Pass a .onnx, .pt2, .safetensors or TorchScript .pt file written by alexnet-lab export "
               "(a checkpoint goes to --checkpoint).")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters' warnings (torchvision ops not registered, deprecations, torch.export's advice to
    name files .pt2) are not the user's concern."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_model(model: nn.Module, meta: dict, fmt: str, out: str | os.PathLike) -> Path:
    """Write `model` (eval mode, CPU, fp32) as `fmt` with `meta`; the batch dimension stays free.

    ONNX uses torch.onnx's current exporter (torch.export + onnxscript, `dynamo=True`) at its default
    opset (20 with torch 2.13); pt2 is that torch.export program itself (`torch.export.save`);
    safetensors holds the weights alone, rebuilt by `build_model(meta["model"], **meta["model_kwargs"])`.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    out = Path(out)
    model = model.to("cpu", torch.float32).eval()
    example = torch.rand(2, meta["in_channels"], meta["input_size"], meta["input_size"])  # (B, C, S, S)
    batch = ({0: torch.export.Dim("batch")},)  # any batch size; 2 in the example so that 1 is not special
    text = json.dumps(meta)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with _quiet_exporter(), files.atomic_path(out) as tmp:
            if fmt == "onnx":
                program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                            output_names=["logits"], verbose=False, dynamic_shapes=batch)
                program.model.metadata_props[METADATA_KEY] = text
                program.save(str(tmp))
            elif fmt == "pt2":
                program = torch.export.export(model, (example,), dynamic_shapes=batch)
                torch.export.save(program, str(tmp), extra_files={f"{METADATA_KEY}.json": text})
            elif fmt == "safetensors":
                from safetensors.torch import save_file

                weights = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
                save_file(weights, str(tmp), metadata={"format": "pt", METADATA_KEY: text})
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
        try:
            with open(self.path, "rb") as fh:
                kind = self._kind(fh)
                meta_text = self._load_pt2(fh) if kind == PT2 else None  # the very file that was checked
        except OSError as exc:
            raise UserError(f"Cannot read model file '{self.path}': {exc.strerror}.") from None
        if kind == TORCHSCRIPT:
            meta_text = self._load_torchscript()
        elif kind == "safetensors":
            meta_text, weights = self._read_safetensors()
        elif kind == "onnx":
            meta_text = self._load_onnx()
        self.meta = check_model_metadata(meta_text, self.path)
        if kind == "safetensors":
            self.module = self._build_model(weights)
        self._check_graph()

    def _kind(self, fh) -> str:
        """From the content, not the name: a zip archive is TorchScript or pt2 (by its members); a
        safetensors file opens with its header's length (8 bytes, little-endian) and the header's "{";
        anything else is read as ONNX."""
        head = fh.read(9)
        if head[:4] == ZIP_MAGIC:
            fh.seek(0)
            try:
                kind = zip_kind(fh)
            except (zipfile.BadZipFile, EOFError, ValueError) as exc:
                raise UserError(f"'{self.path}' is a damaged zip archive ({_reason(exc)}). {FILE_ADVICE}") from None
            if kind is None:
                raise UserError(f"'{self.path}' is a zip archive but neither a TorchScript nor a torch.export "
                                f"(.pt2) model. {FILE_ADVICE}")
            return kind
        if len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= os.fstat(fh.fileno()).st_size:
            return "safetensors"
        return "onnx"

    def _load_onnx(self) -> str | None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(f"'{self.path}' is not a readable ONNX model ({_reason(exc)}).") from None
        self.kind = "onnx (onnxruntime)"
        return self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)

    def _load_pt2(self, fh) -> str:
        fh.seek(0)
        check_pt2(fh, self.path)  # before torch.export.load reads anything (engine/archives.py)
        fh.seek(0)
        extra = {f"{METADATA_KEY}.json": ""}
        try:
            with weights_only_loads(), _quiet_exporter():
                self.module = torch.export.load(fh, extra_files=extra).module()  # eval mode is in the graph
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types on damaged archives
            raise UserError(f"'{self.path}' is not a readable torch.export (.pt2) model ({_reason(exc)[:200]}). "
                            f"{FILE_ADVICE}") from None
        self.kind = "pt2 (torch.export)"
        return extra[f"{METADATA_KEY}.json"]

    def _read_safetensors(self) -> tuple[str | None, dict]:
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta_text = (fh.metadata() or {}).get(METADATA_KEY)
            weights = load_file(str(self.path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError and others
            raise UserError(f"'{self.path}' is not a readable safetensors file ({_reason(exc)[:200]}). "
                            f"{FILE_ADVICE}") from None
        self.kind = "safetensors (alexnet_lab.models)"
        return meta_text, weights

    def _build_model(self, weights: dict) -> nn.Module:
        """The registered model the metadata names, built with its options, the file's weights loaded
        strictly: names and shapes compared first (on the meta device), so a mismatch names the tensor."""
        from alexnet_lab.models import build_model

        name, kwargs = check_model_build(self.meta, self.path)
        with torch.device("meta"):
            expected = {key: tuple(value.shape) for key, value in build_model(name, **kwargs).state_dict().items()}
        problems = state_problems(expected, weights)
        if problems:
            more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
            raise UserError(f"Model file '{self.path}' does not match model '{name}' built with {kwargs} "
                            f"({'; '.join(problems[:2])}{more}): its weights and metadata disagree. Export the "
                            "model again with alexnet-lab export.")
        model = build_model(name, **kwargs)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:  # e.g. a complex tensor under a float parameter's name
            raise UserError(f"Model file '{self.path}' has weights model '{name}' cannot take "
                            f"({_reason(exc)[:200]}). Export the model again with alexnet-lab export.") from None
        return model.eval()

    def _load_torchscript(self) -> bytes | str:
        extra = {f"{METADATA_KEY}.json": ""}
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra).eval()
        except Exception as exc:  # noqa: BLE001 - torch.jit raises RuntimeError and others on foreign files
            raise UserError(f"'{self.path}' is not a readable TorchScript model ({_reason(exc)}). "
                            f"{FILE_ADVICE}") from None
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
        except Exception as exc:  # noqa: BLE001 - onnxruntime, TorchScript and torch.export raise their own types
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
