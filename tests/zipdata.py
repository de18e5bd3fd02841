"""Zip archives laid out byte for byte as torch's writer lays them out (so a test can change one thing in a
checkpoint or a .pt2 and nothing else), optionally with an entry DEFLATE-compressed."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

LOCAL, DESCRIPTOR = struct.Struct("<4s5H3I2H"), struct.Struct("<4s3I")
CENTRAL, END = struct.Struct("<4s6H3I5H2I"), struct.Struct("<4s4H2IH")
END64, LOCATOR = struct.Struct("<4sQ2H2I4Q"), struct.Struct("<4sIQI")


def members(path: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of each entry of a genuine archive, in order."""
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def deflated_zeros(size: int, chunk: int = 2**20) -> bytes:
    """`size` zero bytes, DEFLATE-compressed (raw, as in a zip entry), made without holding them all."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    parts = [packer.compress(zeros) for _ in range(size // chunk)]
    return b"".join(parts) + packer.compress(bytes(size % chunk)) + packer.flush()


def zip_bytes(entries: list[tuple[str, bytes]], deflated: dict[str, tuple[bytes, int, int]] | None = None) -> bytes:
    """The archive torch's writer would write for `entries`: each local header padded ("FB" extra field) so
    its data starts at a multiple of 64, a data descriptor after the data, the central directory, zip64 end
    records, the end record. `deflated[name] = (compressed bytes, size, crc)` stores that entry compressed."""
    deflated = deflated or {}
    out, central = bytearray(), bytearray()
    for name, data in entries:
        raw, offset = name.encode(), len(out)
        method, payload, size, crc = 0, data, len(data), zlib.crc32(data)
        if name in deflated:
            method, (payload, size, crc) = 8, deflated[name]
        pad = -(offset + LOCAL.size + len(raw) + 4) % 64
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        out += LOCAL.pack(b"PK\x03\x04", 0, 0x0808, method, 0, 0, 0, 0, 0, len(raw), len(extra)) + raw + extra
        out += payload + DESCRIPTOR.pack(b"PK\x07\x08", crc, len(payload), size)
        central += CENTRAL.pack(b"PK\x01\x02", 0, 0, 0x0808, method, 0, 0, crc, len(payload), size, len(raw),
                                0, 0, 0, 0, 0, offset) + raw
    cd_offset, count = len(out), len(entries)
    out += central
    end64 = len(out)
    out += END64.pack(b"PK\x06\x06", 44, 0x031E, 0x2D, 0, 0, count, count, len(central), cd_offset)
    out += LOCATOR.pack(b"PK\x06\x07", 0, end64, 1)
    out += END.pack(b"PK\x05\x06", 0, 0, count, count, len(central), cd_offset, 0)
    return bytes(out)


def write_zip(path: Path, entries: list[tuple[str, bytes]], **options) -> Path:
    path.write_bytes(zip_bytes(entries, **options))
    return path


def rewrite_member(source: Path, target: Path, suffix: str, edit) -> Path:
    """A copy of the archive `source` whose entry ending in `suffix` is `edit(bytes)` (added when absent)."""
    entries = members(source)
    top = entries[0][0].split("/")[0]
    if not any(name.endswith(suffix) for name, _ in entries):
        entries.append((f"{top}/{suffix}", b""))
    return write_zip(target, [(name, edit(data) if name.endswith(suffix) else data) for name, data in entries])
