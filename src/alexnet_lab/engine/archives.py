"""The one reader of zip files from outside (checkpoints, .pt2 models): read once, accepted only in torch's own
writer's layout (`Archive.parse`: one reading of the bytes, whoever reads them), a .pt2's contents checked
(`check_pt2`); torch then loads exactly the checked bytes (`Archive.stream`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import struct
from pathlib import Path
from typing import Callable, Iterator

from alexnet_lab.errors import UserError, describe, printable

TORCHSCRIPT, PT2 = "torchscript", "pt2"
MAX_BYTES = 2**31 - 1  # bytes: far above any registered model's checkpoint (AlexNet's with its optimizer: ~0.4 GB)
JSON_MAX = 64 * 2**20  # bytes: a model.json of a registered model is under 1 MiB; a larger one is refused unread
# The names below the top folder that torch 2.13's writers give our files (torch.save: a checkpoint;
# torch.export.save: a .pt2 with our one extra file; its sample inputs are a torch.save archive inside it).
CHECKPOINT_NAMES = re.compile(r"data\.pkl|byteorder|version|\.format_version|\.storage_alignment|"
                              r"\.data/version|\.data/serialization_id|data/\d{1,12}")
PT2_NAMES = re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
                       r"models/model\.json|extra/alexnet_lab\.json|data/sample_inputs/model\.pt|"
                       r"data/weights/(model_weights_config\.json|weight_\d{1,12})|"
                       r"data/constants/(model_constants_config\.json|tensor_\d{1,12})")
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
# The records torch's writer (miniz) lays out, little-endian: a local header (name, padding extra field
# "FB"), the data, a data descriptor (its CRC and sizes: flag bit 3), and after the last entry the
# central directory, a zip64 end record and its locator, the end record.
_LOCAL, _DESCRIPTOR = struct.Struct("<4s5H3I2H"), struct.Struct("<4s3I")
_CENTRAL, _END = struct.Struct("<4s6H3I5H2I"), struct.Struct("<4s4H2IH")
_END64, _LOCATOR = struct.Struct("<4sQ2H2I4Q"), struct.Struct("<4sIQI")
_FLAGS = 0x0808  # bit 3: sizes in a data descriptor after the data; bit 11: UTF-8 names
TORCHSCRIPT_PROBLEM = ("it is a TorchScript model, which is code, and alexnet-lab no longer reads TorchScript "
                       "(deprecated in PyTorch)")


class BadArchive(Exception):
    """What makes a file other than an archive our writers produce (the caller says whose file, and what to do)."""


def read_file(path: Path) -> bytes:
    """All of a regular file's bytes, read once (a FIFO or a device is refused unread, as is a file over
    MAX_BYTES). OSError as raised."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadArchive("it is not a regular file")
        if info.st_size > MAX_BYTES:
            raise BadArchive(f"it is {info.st_size:,} bytes, more than the {MAX_BYTES:,} alexnet-lab reads")
        data = fh.read(info.st_size + 1)  # one byte more: a file that grew meanwhile shows it
    if len(data) > MAX_BYTES:
        raise BadArchive(f"it grew to over {MAX_BYTES:,} bytes while being read")
    return data


class Archive:
    """A zip archive as checked: its bytes, its top folder, and where each entry's bytes lie in them
    ({name below the top folder: (start, size)})."""

    def __init__(self, data: bytes, top: str, members: dict[str, tuple[int, int]]):
        self.data, self.top, self.members = data, top, members

    @classmethod
    def parse(cls, data: bytes) -> "Archive":
        """`data` checked to be laid out exactly as torch's writer lays out an archive; else BadArchive."""
        entries = _walk(data, *_central_directory(data))
        compressed = [name for name, _, _, method in entries if method]
        if compressed:  # refused unread: nothing is ever inflated
            if any("/code/" in name for name, *_ in entries):
                raise BadArchive(TORCHSCRIPT_PROBLEM)
            raise BadArchive(f"its entry {describe(compressed[0], 80)} is compressed; torch.save and torch.export "
                             "never compress an entry, and alexnet-lab refuses compressed entries rather than "
                             "inflate them")
        seen: set[str] = set()
        for name, *_ in entries:
            if name.lower() in seen:  # torch's reader may take either copy (and compares names ignoring case)
                raise BadArchive(f"it holds two entries named {describe(name, 80)}")
            seen.add(name.lower())
        tops = {name.split("/", 1)[0] for name, *_ in entries}
        if len(tops) != 1 or "" in tops or any("/" not in name for name, *_ in entries):
            raise BadArchive("its entries do not all lie in one top folder")
        top = tops.pop()
        return cls(data, top, {name[len(top) + 1:]: (start, size) for name, start, size, _ in entries})

    def check_names(self, layout: re.Pattern, writer: str) -> None:
        for name in self.members:
            if not layout.fullmatch(name):
                raise BadArchive(f"it holds an entry named {describe(name, 80)}, which {writer} never writes")

    def kind(self) -> str | None:
        """PT2, TORCHSCRIPT (its `code/` and `constants.pkl`) or None (such as a checkpoint)."""
        if "archive_format" in self.members or any(name.startswith("models/") for name in self.members):
            return PT2
        if "constants.pkl" in self.members or any(name.startswith("code/") for name in self.members):
            return TORCHSCRIPT
        return None

    def read(self, name: str) -> bytes:
        start, size = self.members[name]
        return self.data[start:start + size]

    def stream(self) -> io.BytesIO:
        """The checked bytes as a file for torch (sharing them: no copy)."""
        return io.BytesIO(self.data)


def _central_directory(data: bytes) -> tuple[int, int, int]:
    """(entries, central directory offset, where it must end) from the end records, which must end the file."""
    end = len(data) - _END.size
    if not data:
        raise BadArchive("it is empty")
    if end < 0 or data[end:end + 4] != b"PK\x05\x06":
        raise BadArchive("it does not end with a zip archive's end record, so it is cut short, has bytes appended "
                         "or is not a zip archive")
    _, disk, cd_disk, on_disk, count, cd_size, cd_offset, comment = _END.unpack_from(data, end)
    if disk or cd_disk or comment or on_disk != count:
        raise BadArchive("its end record has a comment or spans several disks")
    if end >= _LOCATOR.size and data[end - _LOCATOR.size:end - _LOCATOR.size + 4] == b"PK\x06\x07":
        _, disk, offset64, disks = _LOCATOR.unpack_from(data, end - _LOCATOR.size)
        record = (_END64.unpack_from(data, offset64) if offset64 == end - _LOCATOR.size - _END64.size >= 0
                  else (b"",) * 10)
        if (disk, disks, record[0], record[1], record[4:]) != (0, 1, b"PK\x06\x06", 44,
                                                              (0, 0, count, count, cd_size, cd_offset)):
            raise BadArchive("its zip64 end records disagree with its end record")
        end = offset64
    if cd_offset + cd_size != end:
        raise BadArchive("its central directory does not end where its end records begin")
    return count, cd_offset, end


def _walk(data: bytes, count: int, cd_offset: int, cd_end: int) -> list[tuple[str, int, int, int]]:
    """(name, start, size, compression method) of each entry: every central directory record matched with
    its local header and data descriptor, the entries back to back from byte 0 to the central directory."""
    entries, pos, offset = [], cd_offset, 0
    for _ in range(count):
        if pos + _CENTRAL.size > cd_end:
            raise BadArchive("its central directory is cut short")
        (sig, _, _, flags, method, _, _, crc, csize, size, name_len, extra_len, comment_len, disk, _, _,
         local) = _CENTRAL.unpack_from(data, pos)
        raw = data[pos + _CENTRAL.size:pos + _CENTRAL.size + name_len]
        pos += _CENTRAL.size + name_len
        if sig != b"PK\x01\x02" or pos > cd_end:
            raise BadArchive("its central directory is damaged")
        name = _name(raw)
        if method == 0 and csize != size:
            raise BadArchive(f"its entry {describe(name, 80)} declares two different sizes")
        if flags != _FLAGS or extra_len or comment_len or disk:
            raise BadArchive(f"its entry {describe(name, 80)} has flags, extra fields or a comment torch never writes")
        if local != offset:
            raise BadArchive(f"its entry {describe(name, 80)} starts at byte {local:,}, not at byte {offset:,} where "
                             "the entry before it ends (bytes hidden between entries, or entries overlapping)")
        start = _local_header(data, local, raw, method, cd_offset)
        stop = start + csize
        if stop + _DESCRIPTOR.size > cd_offset or _DESCRIPTOR.unpack_from(data, stop) != (b"PK\x07\x08", crc,
                                                                                           csize, size):
            raise BadArchive(f"its entry {describe(name, 80)} is not followed by the data descriptor its central "
                             "directory implies (its declared size is wrong)")
        entries.append((name, start, size, method))
        offset = stop + _DESCRIPTOR.size
    if offset != cd_offset or pos != cd_end:
        raise BadArchive("it holds bytes that no entry of its central directory accounts for")
    return entries


def _local_header(data: bytes, offset: int, raw_name: bytes, method: int, limit: int) -> int:
    """Where the data of the entry whose local header is at `offset` starts."""
    if offset + _LOCAL.size > limit:
        raise BadArchive("a local header lies past the entries")
    sig, _, flags, local_method, _, _, crc, csize, size, name_len, extra_len = _LOCAL.unpack_from(data, offset)
    name = data[offset + _LOCAL.size:offset + _LOCAL.size + name_len]
    if sig != b"PK\x03\x04" or name != raw_name or (flags, local_method, crc, csize, size) != (_FLAGS, method, 0, 0, 0):
        raise BadArchive(f"the local header at byte {offset:,} ({describe(_name(name), 80)}) disagrees with its "
                         f"central directory record ({describe(_name(raw_name), 80)})")
    return offset + _LOCAL.size + name_len + extra_len


def _name(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = printable(raw.decode("utf-8", "surrogateescape"))
        raise BadArchive(f"an entry's name is not UTF-8 ({text[:80]})") from None
    if not name.isprintable() or not name:
        raise BadArchive(f"an entry's name holds control characters ({describe(name, 80)})")
    return name


def read_archive(path: Path, refuse: Callable[[str], UserError], layout: re.Pattern | None = None,
                 writer: str = "torch.save") -> Archive:
    """The file at `path` read once and checked (`Archive.parse`; with `layout`, its names too); a problem
    is raised as `refuse(problem)`. OSError as raised."""
    try:
        archive = Archive.parse(read_file(path))
        if layout is not None:
            archive.check_names(layout, writer)
    except BadArchive as exc:
        raise refuse(str(exc)) from None
    return archive


def check_pt2(archive: Archive, path) -> None:
    """Raise a UserError naming `path` unless `archive` holds only what an export of a registered model holds
    (torch.export.load would run pickles, guard code, sympy text). Narrows what a forged file can do; not a
    sandbox: for a file from someone else, prefer safetensors or ONNX."""
    def refuse(problem: str):
        raise UserError(f"'{printable(str(path))}' is not a torch.export model as alexnet-lab export writes it: "
                        f"{problem}. alexnet-lab does not load it, since torch.export.load would run code from "
                        "the file. Export the model again with alexnet-lab export (or use a .safetensors file).")

    try:
        archive.check_names(PT2_NAMES, "alexnet-lab export")
        if "data/sample_inputs/model.pt" in archive.members:  # a torch.save archive inside, loaded by torch.load
            Archive.parse(archive.read("data/sample_inputs/model.pt")).check_names(CHECKPOINT_NAMES, "torch.save")
    except BadArchive as exc:
        refuse(str(exc))

    def read_json(name: str):
        if name not in archive.members:
            refuse(f"it lacks {name}")
        if archive.members[name][1] > JSON_MAX:
            refuse(f"{name} is {archive.members[name][1]:,} bytes")
        try:
            return json.loads(archive.read(name))
        except (ValueError, RecursionError):
            refuse(f"{name} is not readable JSON")

    for folder, config, prefix in (("weights", "model_weights_config.json", "weight_"),
                                   ("constants", "model_constants_config.json", "tensor_")):
        entries = read_json(f"data/{folder}/{config}")
        entries = entries.get("config") if isinstance(entries, dict) else None
        if not isinstance(entries, dict):
            refuse(f"data/{folder}/{config} has no config")
        for key, entry in entries.items():
            if not (isinstance(entry, dict) and entry.get("use_pickle") is False
                    and str(entry.get("path_name", "")).startswith(prefix)):
                refuse(f"its {folder[:-1]} {describe(str(key), 60)} is stored as a pickle or another object")
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
                    refuse(f"its graph calls {describe(target, 80)}, not an aten operator")
            if "expr_str" in item:
                expressions.append(item["expr_str"])
            if item.get("custom_obj_values"):
                refuse("it holds custom objects")
            stack.extend(item.values())
    for expr in expressions:
        names = re.findall(r"[A-Za-z_]\w*", expr) if isinstance(expr, str) else None
        if (names is None or not _EXPR.fullmatch(expr) or "__" in expr or "**" in expr
                or any(name not in _EXPR_NAMES and not _SIZE_SYMBOL.fullmatch(name) for name in names)):
            refuse(f"it has the shape expression {describe(expr, 80)}, which torch.export.load would evaluate")


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
