"""Reader for the IDX format of (Fashion-)MNIST, gzipped or plain.

Every way a file can be wrong becomes a `UserError` naming the file and the fix.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from alexnet_lab.errors import UserError

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_DIMS = 4  # Fashion-MNIST uses 1 (labels) and 3 (images)
MAX_ITEMS = 1 << 31  # refuse headers that promise absurd sizes


def _fix_hint(path: Path) -> str:
    return (
        f"Delete '{path}' and let alexnet-lab download it again, or point --data-dir "
        "(or ALEXNET_LAB_DATA) at a folder holding the four official Fashion-MNIST files."
    )


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"IDX file '{path}' does not exist. {_fix_hint(path)}") from None
    except OSError as exc:
        raise UserError(f"Cannot read IDX file '{path}': {exc.strerror}. {_fix_hint(path)}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(
                f"'{path}' is a damaged or truncated gzip file ({exc}). {_fix_hint(path)}"
            ) from None
    return raw


def parse_idx(raw: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (already decompressed) into an array, validating the header."""
    path = Path(path)
    if len(raw) < 4:
        raise UserError(f"'{path}' is too short to be an IDX file ({len(raw)} bytes). {_fix_hint(path)}")
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in IDX_DTYPES or not 1 <= ndim <= MAX_DIMS:
        raise UserError(
            f"'{path}' has the wrong magic number 0x{raw[:4].hex()} (an IDX file starts with "
            f"0x0000 then a type code and 1..{MAX_DIMS} dimensions). {_fix_hint(path)}"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise UserError(f"'{path}' is truncated inside its header. {_fix_hint(path)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(dims)  # Python ints: np.prod would wrap around for four huge dimensions
    if math.prod(d for d in dims if d) > MAX_ITEMS:  # nonzero dims too: numpy refuses (0, 3e9, 3e9)
        raise UserError(f"'{path}' declares an impossible shape {dims}. {_fix_hint(path)}")
    dtype = IDX_DTYPES[type_code]
    expected = header_len + count * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise UserError(
            f"'{path}' is {what}: header shape {dims} needs {expected} bytes, file has {len(raw)}. "
            f"{_fix_hint(path)}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len)
    return data.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a native-endian numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), path)
