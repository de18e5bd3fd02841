"""Exporting a trained model (ONNX, torch.export .pt2, safetensors weights) with its metadata
(`inference.metadata`), and `ModelFile`, which runs any of them: float32 (B, C, S, S) in [0, 1] -> logits."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from alexnet_lab import files
from alexnet_lab.engine.archives import (PT2, TORCHSCRIPT, TORCHSCRIPT_PROBLEM, check_pt2, read_archive,
                                         weights_only_loads)
from alexnet_lab.engine.checkpoint import _cause
from alexnet_lab.engine.schema import check_model_build, check_model_metadata, weights_problem
from alexnet_lab.errors import UserError, describe, printable

FORMATS = ("onnx", "pt2", "safetensors")
# The metadata, one JSON text: ONNX metadata_props key; pt2: extra file "alexnet_lab.json"; safetensors:
# __metadata__ key (safetensors metadata maps text to text).
METADATA_KEY = "alexnet_lab"
ZIP_MAGIC = b"PK\x03\x04"               # pt2 files are zip archives (engine/archives.py)
ATOL, RTOL = 1e-4, 1e-3                 # the export check: |exported - pytorch| <= ATOL + RTOL * |pytorch|
FILE_ADVICE = ("Export the model again with alexnet-lab export (--format onnx, pt2 or safetensors); a "
               "checkpoint goes to --checkpoint.")
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def check_format(fmt: str) -> None:
    """Refuse a format alexnet-lab does not write (TorchScript, deprecated in PyTorch, is code)."""
    if fmt == "torchscript":
        raise UserError("--format torchscript was removed (TorchScript is deprecated in PyTorch): use --format pt2 "
                        "(torch.export, its successor) or --format onnx.")
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {describe(fmt)}.")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters' warnings (deprecations, torch.export's naming advice) are not the user's concern."""
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
    """Write `model` (eval mode, CPU, fp32) as `fmt` with `meta`, any batch size: ONNX by torch.onnx's dynamo
    exporter, pt2 the torch.export program, safetensors the weights alone (rebuilt by `build_model`). pt2 and
    safetensors are made in memory and written by files.py (torch's zip writer aborts on a full disk); a disk
    too full is one UserError naming the file and the space it needs, before or while writing, no temp left."""
    check_format(fmt)
    out = Path(out)
    model = model.to("cpu", torch.float32).eval()
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())  # bytes: the weights
    example = torch.rand(2, meta["in_channels"], meta["input_size"], meta["input_size"])  # (B, C, S, S)
    batch = ({0: torch.export.Dim("batch")},)  # any batch size; 2 in the example so that 1 is not special
    text = json.dumps(meta)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if _free_bytes(out.parent) < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
        with _quiet_exporter():
            if fmt == "onnx":
                program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                            output_names=["logits"], verbose=False, dynamic_shapes=batch)
                program.model.metadata_props[METADATA_KEY] = text
                with files.atomic_path(out) as tmp:
                    program.save(str(tmp))
            elif fmt == "pt2":
                buffer = io.BytesIO()
                torch.export.save(torch.export.export(model, (example,), dynamic_shapes=batch), buffer,
                                  extra_files={f"{METADATA_KEY}.json": text})
                files.write_bytes(out, buffer.getbuffer())
            else:
                from safetensors.torch import save

                weights = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
                files.write_bytes(out, save(weights, metadata={"format": "pt", METADATA_KEY: text}))
    except files.WriteError as exc:
        if exc.cause is None or exc.cause.errno not in _FULL:
            raise
        raise _disk_full(out, exc.cause, needed) from None
    except (OSError, RuntimeError) as exc:  # a RuntimeError from a writer may wrap the OSError (ENOSPC, ...)
        cause = _cause(exc)
        if not isinstance(cause, OSError):
            raise
        raise (_disk_full(out, cause, needed) if cause.errno in _FULL else files.WriteError(out, cause)) from None
    return out


def _free_bytes(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return float("inf")  # unknown: the write itself will tell


def _disk_full(out: Path, exc: OSError, needed: int) -> files.WriteError:
    free = _free_bytes(out.parent)
    free = f"{free / 2**20:.1f} MiB are" if free != float("inf") else "less is"
    return files.WriteError(out, exc, message=f"Cannot write '{printable(str(out))}': {exc.strerror or exc}. The "
                                              f"file needs about {needed / 2**20:.1f} MiB (the model's weights) and "
                                              f"{free} free there. Free disk space or choose another --out; nothing "
                                              "was written.")


class ModelFile:
    """An exported model, callable as float32 (B, C, S, S) -> logits (B, classes) on the CPU."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"Model file '{self.path}' does not exist. Write one with alexnet-lab export.")
        try:
            with open(self.path, "rb") as fh:
                kind = self._kind(fh)
            if kind == "zip":  # read once and checked; torch loads those very bytes
                meta_text = self._load_pt2(read_archive(self.path, self._not_a_model))
        except OSError as exc:
            raise UserError(f"Cannot read model file '{self.path}': {exc.strerror}.") from None
        if kind == "safetensors":
            meta_text, weights = self._read_safetensors()
        elif kind == "onnx":
            meta_text = self._load_onnx()
        self.meta = check_model_metadata(meta_text, self.path)
        if kind == "safetensors":
            self.module = self._build_model(weights)
        self._check_graph()

    def _kind(self, fh) -> str:
        """From the content, not the name: a zip archive is pt2; safetensors opens with its header's length (8
        bytes, little-endian) and "{"; anything else is read as ONNX."""
        head = fh.read(9)
        if head[:4] == ZIP_MAGIC:
            return "zip"
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

    def _not_a_model(self, problem: str) -> UserError:
        return UserError(f"'{printable(str(self.path))}' is not a model file as alexnet-lab export writes it: "
                         f"{problem}. alexnet-lab does not load it. {FILE_ADVICE}")

    def _load_pt2(self, archive) -> str:
        """A checked archive (engine/archives.py): TorchScript or another zip refused, a .pt2 checked to hold
        only what an export holds before torch.export.load reads any of it."""
        if archive.kind() == TORCHSCRIPT:
            raise self._not_a_model(TORCHSCRIPT_PROBLEM)
        if archive.kind() != PT2:
            raise UserError(f"'{printable(str(self.path))}' is a zip archive but not a torch.export (.pt2) model. "
                            f"{FILE_ADVICE}")
        check_pt2(archive, self.path)
        extra = {f"{METADATA_KEY}.json": ""}
        try:
            with weights_only_loads(), _quiet_exporter():
                # eval mode is in the graph
                self.module = torch.export.load(archive.stream(), extra_files=extra).module()
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
        """The registered model the metadata names with the file's weights, names and shapes compared first
        (on the meta device), so a mismatch names the tensor."""
        from alexnet_lab.models import build_model

        name, kwargs = check_model_build(self.meta, self.path)
        with torch.device("meta"):
            problem = weights_problem(build_model(name, **kwargs), weights)
        if problem:
            raise UserError(f"Model file '{self.path}' does not match model '{name}' built with {kwargs} ({problem}): "
                            "its weights and metadata disagree. Export the model again with alexnet-lab export.")
        model = build_model(name, **kwargs)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:  # e.g. a complex tensor under a float parameter's name
            raise UserError(f"Model file '{self.path}' has weights model '{name}' cannot take "
                            f"({_reason(exc)[:200]}). Export the model again with alexnet-lab export.") from None
        return model.eval()

    def _check_graph(self) -> None:
        """The metadata must describe the graph: (1, C, S, S) zeros give (1, classes) logits; checked before
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
        except Exception as exc:  # noqa: BLE001 - onnxruntime and torch.export raise their own types
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
    """The first non-empty line of a loader's error, else its type."""
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
