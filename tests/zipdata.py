"""Zip archives laid out byte for byte as torch's writer lays them out (so a test can change one thing in a
checkpoint or a .pt2 and nothing else): an entry DEFLATE-compressed, bytes hidden before an entry, a size
declared larger than the entry, a local header naming another entry."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

LOCAL, DESCRIPTOR = struct.Struct("<4s5H3I2H"), struct.Struct("<4s3I")
CENTRAL, END = struct.Struct("<4s6H3I5H2I"), struct.Struct("<4s4H2IH")
END64, LOCATOR = struct.Struct("<4sQ2H2I4Q"), struct.Struct("<4sIQI")


def members(source: Path | bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of each entry of a genuine archive (a file, or its bytes), in order."""
    with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def deflated(data: bytes) -> tuple[bytes, int, int]:
    """(`data` DEFLATE-compressed as in a zip entry, its size, its CRC-32)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush(), len(data), zlib.crc32(data)


def deflated_zeros(size: int, chunk: int = 2**20) -> tuple[bytes, int, int]:
    """`deflated(bytes(size))`, made without ever holding `size` bytes (a zip bomb's payload)."""
    packer, zeros, parts, crc = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(chunk), [], 0
    for _ in range(size // chunk):
        parts.append(packer.compress(zeros))
        crc = zlib.crc32(zeros, crc)
    return b"".join(parts) + packer.flush(), size // chunk * chunk, crc


def zip_bytes(entries: list[tuple[str, bytes]], *, compressed: dict | None = None, hidden: dict | None = None,
              declared: dict | None = None, local_names: dict | None = None) -> bytes:
    """The archive torch's writer would write for `entries`: each local header padded ("FB" extra field) so
    its data starts at a multiple of 64, a data descriptor after the data, the central directory, zip64 end
    records, the end record. By entry name: `compressed[name] = deflated(...)` stores it compressed,
    `hidden[name]` = bytes put before its local header, `declared[name]` = bytes added to its declared
    size, `local_names[name]` = the name its local header gives."""
    compressed, hidden, declared, local_names = (option or {} for option in (compressed, hidden, declared,
                                                                              local_names))
    out, central = bytearray(), bytearray()
    for name, data in entries:
        out += hidden.get(name, b"")
        raw, local_raw, offset = name.encode(), local_names.get(name, name).encode(), len(out)
        method, (payload, size, crc) = (8, compressed[name]) if name in compressed else (0, (data, len(data),
                                                                                          zlib.crc32(data)))
        pad = -(offset + LOCAL.size + len(local_raw) + 4) % 64
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        out += LOCAL.pack(b"PK\x03\x04", 0, 0x0808, method, 0, 0, 0, 0, 0, len(local_raw), len(extra))
        more = declared.get(name, 0)
        out += local_raw + extra + payload + DESCRIPTOR.pack(b"PK\x07\x08", crc, len(payload) + more, size + more)
        central += CENTRAL.pack(b"PK\x01\x02", 0, 0, 0x0808, method, 0, 0, crc, len(payload) + more, size + more,
                                len(raw), 0, 0, 0, 0, 0, offset) + raw
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
