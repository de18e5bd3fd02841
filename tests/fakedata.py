"""Tiny synthetic Fashion-MNIST for tests: folders of valid gz IDX files written byte by byte, and
in-memory splits.

The IDX encoder here is written from the format's description, independent of the reader under test.
"""

from __future__ import annotations

import contextlib
import gzip
import struct
from pathlib import Path

import numpy as np

STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """IDX encoding: 0x0000, type code, number of dims, each dim as big-endian uint32, then the data."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array).astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_arrays(n_train: int = 256, n_test: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Images whose mean brightness depends on the label, so a model can learn something."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        noise = rng.integers(0, 60, size=(n, 28, 28))
        images = (noise + labels[:, None, None].astype(np.int64) * 19).clip(0, 255).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def make_dataset(folder: Path, n_train: int = 256, n_test: int = 64, seed: int = 0, gz: bool = True,
                 **replace) -> Path:
    """Write the four files (gzipped or plain) into `folder`; `replace` swaps in other arrays by key."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {**make_arrays(n_train, n_test, seed), **replace}
    for key, stem in STEMS.items():
        write_idx(folder / (f"{stem}.gz" if gz else stem), arrays[key], gz=gz)
    return folder


def bar_images(labels: np.ndarray, rng) -> np.ndarray:
    """Dark noise with a bright bar whose row encodes the class: labels a model can read off the pixels."""
    images = rng.integers(0, 40, (len(labels), 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 250
    return images


def bar_arrays(n_train: int = 256, n_test: int = 64) -> dict[str, np.ndarray]:
    """`make_dataset`'s arrays, as bar images (for `make_dataset(folder, **bar_arrays())`)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = bar_images(labels, rng), labels
    return arrays


def bar_splits(n_train: int, n_test: int, noisy_test: bool = False):
    """In-memory `Splits` of bar images; with `noisy_test` the test labels are unrelated to the pixels,
    so test accuracy stays near chance."""
    import torch

    from alexnet_lab.engine.builders import Splits

    rng = np.random.default_rng(1)
    train_y = rng.integers(0, 10, n_train)
    test_y = rng.integers(0, 10, n_test)
    test_x = bar_images(test_y, rng)
    if noisy_test:
        test_y = rng.integers(0, 10, n_test)
    return Splits(torch.from_numpy(bar_images(train_y, rng)), torch.from_numpy(train_y),
                  torch.from_numpy(test_x), torch.from_numpy(test_y), "synthetic")


def synthetic_splits(n_train: int = 64, n_test: int = 32, seed: int = 0):
    """In-memory `Splits` of uniform random pixels and labels (nothing to learn)."""
    import torch

    from alexnet_lab.engine.builders import Splits

    g = torch.Generator().manual_seed(seed)
    return Splits(torch.randint(0, 256, (n_train, 28, 28), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n_train,), generator=g),
                  torch.randint(0, 256, (n_test, 28, 28), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n_test,), generator=g), "synthetic")


@contextlib.contextmanager
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread avoids OpenMP oversubscription stalls."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class FullDisk:
    """`monkeypatch.setattr(os, "fdopen", FullDisk(files_ok=2))`: the first `files_ok` files opened
    with os.fdopen are written normally; every later one raises ENOSPC after `bytes_ok` bytes, as a
    full disk does (the OSError carries no file name, like the kernel's)."""

    def __init__(self, files_ok: int = 0, bytes_ok: int = 100):
        import os

        self.real_fdopen = os.fdopen
        self.files_ok, self.bytes_ok, self.opened = files_ok, bytes_ok, 0

    def __call__(self, fd, *args, **kwargs):
        fh = self.real_fdopen(fd, *args, **kwargs)
        self.opened += 1
        return fh if self.opened <= self.files_ok else _FillingFile(fh, self.bytes_ok)


class _FillingFile:
    def __init__(self, fh, bytes_ok: int):
        self.fh, self.left = fh, bytes_ok

    def write(self, data) -> int:
        import errno
        import os

        if len(data) > self.left:
            self.fh.write(bytes(data[:self.left]))
            self.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.fh.close()
