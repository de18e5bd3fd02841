"""Shared test fixtures: hand-built IDX files and a tiny synthetic Fashion-MNIST folder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Encode an array as IDX by hand (independent of the reader under test)."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_dataset(folder: Path, n_train: int = 64, n_test: int = 32, seed: int = 0, gz: bool = True) -> Path:
    """A Fashion-MNIST-shaped folder of random images whose label is visible in the pixels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):  # a bright bar whose row encodes the class
            images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 250
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, gz)
    return folder


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "fmnist")


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "train-images-idx3-ubyte.gz").exists():
        raise RuntimeError("the real Fashion-MNIST is missing: run 'make setup' (installs dataset-fashion-mnist)")
    return REAL_DATA


def chapter_text() -> str:
    """The spec (../shared/spec beside the repo), or the committed copy of its printout."""
    spec = REPO.parent / "shared" / "spec" / "alexnet-chapter.md"
    if spec.exists():
        return spec.read_text(encoding="utf-8")
    return (REPO / "tests" / "data" / "alexnet-chapter.md").read_text(encoding="utf-8")
