"""Zip model files: TorchScript and torch.export (.pt2) archives told apart by their members, and a .pt2
archive checked to hold only what `alexnet-lab export` writes before torch.export.load reads any of it.

torch.export.load is not safe on a file from someone else (its docs: "uses pickle under the hood"): a
weight or constant may be a pickle, `guards_code` is Python source, symbolic shapes are parsed by sympy
(which evaluates text) and a node's target may name any attribute under `torch`. `check_pt2` refuses
each of those unless it is what an export of a registered model contains: aten operators, raw tensor
payloads, no guard code, shape expressions over a few sympy names; the load itself runs with every
torch.load forced to weights_only (`weights_only_loads`). This narrows what a forged file can do; it is
not a sandbox: for a file from someone else, prefer safetensors (weights only) or ONNX (onnxruntime).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from typing import IO, Iterator

from alexnet_lab.errors import UserError

TORCHSCRIPT, PT2 = "torchscript", "pt2"
JSON_MAX = 64 * 2**20  # bytes: a model.json of a registered model is under 1 MiB; a larger one is refused unread
# What a node may call: an aten operator (minus the one that opens a file named in the graph), or the few
# Python operators torch.export uses for tuple outputs and symbolic sizes.
_TARGET = re.compile(r"torch\.ops\.aten\.\w+\.\w+|_operator\.(getitem|add|sub|mul|floordiv|mod|neg)")
_REFUSED_OPS = {"from_file"}
# Shape expressions as torch.export writes them, e.g. "Symbol('s31', positive=True, integer=True)":
# no dots, no double underscores, and every name either a size symbol (s31, u0) or one of these.
_EXPR = re.compile(r"[A-Za-z0-9_+\-*/%(),<>=!' ]{1,200}")
_EXPR_NAMES = {"Symbol", "Integer", "positive", "integer", "nonnegative", "True", "False", "Mod", "FloorDiv",
               "PythonMod", "CleanDiv", "CeilDiv", "CeilToInt", "FloorToInt", "Max", "Min", "Abs", "Eq", "Ne"}
_SIZE_SYMBOL = re.compile(r"[a-z]\d{1,6}")


def zip_kind(fh: IO[bytes]) -> str | None:
    """TORCHSCRIPT, PT2 or None (a zip archive that is neither, such as a checkpoint saved by torch.save).

    Both are zip archives under one top folder; TorchScript holds `code/` (the module's TorchScript
    source) and `constants.pkl`, a torch.export archive `archive_format` and `models/<name>.json`."""
    with zipfile.ZipFile(fh) as archive:
        rests = {name.split("/", 1)[1] for name in archive.namelist() if "/" in name}
    if "archive_format" in rests or any(rest.startswith("models/") for rest in rests):
        return PT2
    if "constants.pkl" in rests or any(rest.startswith("code/") for rest in rests):
        return TORCHSCRIPT
    return None


def check_pt2(fh: IO[bytes], path) -> None:
    """Raise a UserError naming `path` unless the .pt2 archive in `fh` holds only an export's contents."""
    def refuse(problem: str):
        raise UserError(f"'{path}' is not a torch.export model as alexnet-lab export writes it: {problem}. "
                        "alexnet-lab does not load it, since torch.export.load would run code from the file. "
                        "Export the model again with alexnet-lab export (or use a .safetensors file).")

    with zipfile.ZipFile(fh) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        tops = {name.split("/", 1)[0] for name in infos}
        if len(tops) != 1:
            refuse(f"it has {len(tops)} top-level folders, not one")
        top = tops.pop()

        def read_json(name: str):
            info = infos.get(f"{top}/{name}")
            if info is None:
                refuse(f"it lacks {name}")
            if info.file_size > JSON_MAX:
                refuse(f"{name} is {info.file_size:,} bytes")
            try:
                return json.loads(archive.read(info))
            except (ValueError, RecursionError, zipfile.BadZipFile, OSError):
                refuse(f"{name} is not readable JSON")

        models = sorted(name for name in infos if name.startswith(f"{top}/models/"))
        if models != [f"{top}/models/model.json"]:
            refuse(f"it holds the programs {', '.join(m.split('/')[-1] for m in models) or 'none'}, not one "
                   "model.json")
        for folder, config, prefix in (("weights", "model_weights_config.json", "weight_"),
                                       ("constants", "model_constants_config.json", "tensor_")):
            for name in infos:
                base = name[len(f"{top}/data/{folder}/"):] if name.startswith(f"{top}/data/{folder}/") else None
                if base is not None and base != config and not base.startswith(prefix):
                    refuse(f"it holds data/{folder}/{base}, which would be unpickled")
            entries = read_json(f"data/{folder}/{config}")
            entries = entries.get("config") if isinstance(entries, dict) else None
            if not isinstance(entries, dict):
                refuse(f"data/{folder}/{config} has no config")
            for key, entry in entries.items():
                if not (isinstance(entry, dict) and entry.get("use_pickle") is False
                        and str(entry.get("path_name", "")).startswith(prefix)):
                    refuse(f"its {folder[:-1]} {str(key)[:60]!r} is stored as a pickle or another object")
        program = read_json("models/model.json")
        if not isinstance(program, dict):
            refuse("models/model.json is not an object")
        if program.get("guards_code"):
            refuse("it holds guard code (Python source)")
        _check_program(program, refuse)


def _check_program(program: dict, refuse) -> None:
    """Every node target an allowed operator, every shape expression over allowed names, no custom objects."""
    ranges = program.get("range_constraints") or {}
    expressions = list(ranges) if isinstance(ranges, dict) else [None]
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if isinstance(item.get("target"), str):
                target = item["target"]
                operator = target.split(".")[3] if target.startswith("torch.ops.aten.") else None
                if not _TARGET.fullmatch(target) or operator in _REFUSED_OPS:
                    refuse(f"its graph calls {target[:80]!r}, not an aten operator")
            if "expr_str" in item:
                expressions.append(item["expr_str"])
            if item.get("custom_obj_values"):
                refuse("it holds custom objects")
            stack.extend(item.values())
    for expr in expressions:
        names = re.findall(r"[A-Za-z_]\w*", expr) if isinstance(expr, str) else None
        if (names is None or not _EXPR.fullmatch(expr) or "__" in expr or "**" in expr
                or any(name not in _EXPR_NAMES and not _SIZE_SYMBOL.fullmatch(name) for name in names)):
            refuse(f"it has the shape expression {expr!r:.80}, which torch.export.load would evaluate")


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every torch.load in the block loads weights only, even one that asks for weights_only=False
    (torch.export.load falls back to it): torch's own switch, TORCH_FORCE_WEIGHTS_ONLY_LOAD (and its
    opposite, which would make torch.load refuse both, set aside)."""
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    before = {key: os.environ.pop(key, None) for key in keys}
    os.environ[keys[0]] = "1"
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
