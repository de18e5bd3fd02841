"""The IDX reader against an independent encoder, and random bytes: an array or a UserError, nothing else."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakedata
from suite import examples
from alexnet_lab.data.idx import IDX_DTYPES, parse_idx, read_idx
from alexnet_lab.errors import UserError

FAST = settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check_parse(raw: bytes) -> None:
    """The contract: a valid header and exact length give an array; anything else a UserError."""
    try:
        array = parse_idx(raw, "random.idx")
    except UserError as exc:
        assert "random.idx" in str(exc)
        return
    # Accepted: the bytes must really be a well-formed IDX file of that array (independent check).
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    assert raw[:2] == b"\0\0" and array.shape == dims
    assert array.dtype == IDX_DTYPES[raw[2]].newbyteorder("=")
    assert fakedata.idx_bytes(array, raw[2]) == raw


@FAST
@given(st.binary(max_size=64))
def test_random_bytes(raw):
    check_parse(raw)


@FAST
@given(type_code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x0A, 0xFF]),
       dims=st.lists(st.integers(0, 6) | st.integers(0, 2**32 - 1), min_size=0, max_size=5),
       body=st.binary(max_size=300))
def test_random_headers(type_code, dims, body):
    """Plausible headers (so the fuzzing gets past the magic number) with arbitrary shapes and bodies."""
    header = bytes([0, 0, type_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    check_parse(header + body)


@FAST
@given(raw=st.binary(max_size=200), gz=st.booleans(), cut=st.integers(0, 40))
def test_random_files(tmp_path, raw, gz, cut):
    """Through read_idx: gzip-looking files, damaged gzip streams, plain random bytes."""
    data = gzip.compress(raw) if gz else raw
    path = tmp_path / "f.gz"
    path.write_bytes(data[:len(data) - cut] if gz else data)
    try:
        read_idx(path)
    except UserError as exc:
        assert str(path) in str(exc)


@FAST
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
       dtype=st.sampled_from(["u1", "i1", "i2", "i4", "f4", "f8"]), gz=st.booleans())
def test_round_trip(tmp_path, shape, dtype, gz):
    type_code = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}[dtype]
    rng = np.random.default_rng(len(shape))
    array = rng.integers(-100, 100, size=shape).astype(dtype)
    raw = fakedata.idx_bytes(array, type_code)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    got = read_idx(path)
    assert got.shape == array.shape and got.dtype == np.dtype(dtype) and np.array_equal(got, array)


@pytest.mark.parametrize("raw, message", [
    (b"", "too short to be an IDX file (0 bytes)"),
    (b"\x00\x00\x08\x05" + b"\x00" * 20, "wrong magic number 0x00000805"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "wrong magic number 0x00000701"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated inside its header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "is truncated: header shape (3,) needs 11 bytes, file has 10"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "longer than its header says"),
    (b"\x00\x00\x08\x04" + b"\xff" * 16, "declares an impossible shape"),
])
def test_each_header_error(raw, message):
    with pytest.raises(UserError, match="'x.idx'.*" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_idx(raw, "x.idx")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_idx(tmp_path / "nope.gz")
