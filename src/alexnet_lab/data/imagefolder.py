"""Image folders as a data source: `DIR/<class>/<image>` or `DIR/train|val/<class>/<image>`, split by
their folders or a seeded stratified split, each split held as files (`FileSplit`) or decoded into memory.

The manifest (data/manifest.py) lists the files and reads their headers without decoding: a file whose
header cannot be read is listed and skipped (refused with `strict`). A file that passes its header but
fails to decode is replaced by the next image of its split that decodes (`FileSplit.load`), the same
rule in memory and streamed, so both train on the same images: in memory it is listed before training
(refused with `strict`); streamed it is met mid-run, which must not end the run: a warning names it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alexnet_lab.data.images import decode_image
from alexnet_lab.data.manifest import read_manifest
from alexnet_lab.errors import UserError

MAX_REPLACEMENTS = 64  # files in a row that may fail to decode before the folder itself is suspect


@dataclass(frozen=True)
class FileSplit:
    """One split's images as files, in the split's order; each is decoded to uint8 (C, S, S) when asked
    (`load`, `decode`). Stands where a (N, C, S, S) uint8 tensor would: `len`, `shape`, `ndim`, slices."""
    root: Path
    paths: np.ndarray   # (N,) bytes: relative to root (the manifest's)
    labels: np.ndarray  # (N,) int64
    sizes: np.ndarray   # (N,) int64: bytes, and
    mtimes: np.ndarray  # (N,) int64: modification times (ns), for the fingerprint
    side: int
    channels: int

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self), self.channels, self.side, self.side

    ndim = 4

    def __getitem__(self, key: slice) -> "FileSplit":
        if not isinstance(key, slice):
            raise TypeError("a FileSplit takes slices; decode() gives pixels")
        return FileSplit(self.root, self.paths[key], self.labels[key], self.sizes[key], self.mtimes[key],
                         self.side, self.channels)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.paths[i])

    @property
    def names(self) -> list[str]:
        """Each file's path relative to the folder (POSIX), as val_files.txt lists them."""
        return [os.fsdecode(p) for p in self.paths.tolist()]

    def load(self, i: int) -> tuple[np.ndarray, int, str]:
        """(uint8 (C, S, S) pixels, label, "") of image i; if its file does not decode, those of the next
        one in the split that does (wrapping round), with why image i did not as the third item."""
        reason = ""
        for k in range(min(len(self), MAX_REPLACEMENTS)):
            j = (i + k) % len(self)
            try:
                return decode_image(self.path(j), self.side, self.channels)[0], int(self.labels[j]), reason
            except UserError as exc:
                reason = reason or str(exc)
        raise UserError(f"{min(len(self), MAX_REPLACEMENTS)} image files in a row from '{self.root}' could not be "
                        f"decoded, the first: {reason} Check that the folder is still there and readable, "
                        "then resume the run.")

    def decode(self, key: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
        """(uint8 (n, C, S, S) images, int64 (n,) labels, the (path, reason) of each replaced file) of
        the images `key` selects, decoded by threads: Pillow releases the GIL while it decodes and resizes."""
        from tqdm import tqdm

        positions = range(len(self))[key]
        images = np.zeros((len(positions), self.channels, self.side, self.side), dtype=np.uint8)
        labels = np.zeros(len(positions), dtype=np.int64)

        def one(k: int) -> tuple[str, str] | None:
            images[k], labels[k], reason = self.load(positions[k])
            return (str(self.path(positions[k])), reason) if reason else None

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(tqdm(pool.map(one, range(len(positions))), total=len(positions), unit="img",
                                desc="decoding images", disable=len(positions) < 2000 or None, leave=False))
        return torch.from_numpy(images), torch.from_numpy(labels), [r for r in results if r is not None]


def pixels(images: torch.Tensor | FileSplit, key: slice) -> torch.Tensor:
    """images[key] as uint8 pixels, whether `images` is a tensor or a FileSplit (then decoded)."""
    return images.decode(key)[0] if isinstance(images, FileSplit) else images[key]


@dataclass
class ImageFolderSplits:
    """A split image folder: the files of each split and, held in memory, their decoded images."""
    train: FileSplit
    val: FileSplit
    class_names: tuple[str, ...]
    layout: str                  # "train/val folders" or "stratified split (val fraction F, seed S)"
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, reason): unreadable headers
    readable: int = 0            # files whose header reads (in either split, or past a limit)
    upscaled: int = 0            # of those, the ones whose shorter side is under half of S (upscaled > 2x)
    smallest: tuple[int, int] | None = None  # (width, height) of the upscaled image with the shortest side
    decoded: tuple[torch.Tensor, ...] | None = None  # in memory: train images, labels, val images, labels
    replaced: list[tuple[str, str]] = field(default_factory=list)  # in memory: files that failed to decode

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def train_images(self) -> torch.Tensor | FileSplit:
        return self.train if self.decoded is None else self.decoded[0]

    @property
    def train_labels(self) -> torch.Tensor:
        return torch.from_numpy(self.train.labels) if self.decoded is None else self.decoded[1]

    @property
    def val_images(self) -> torch.Tensor | FileSplit:
        return self.val if self.decoded is None else self.decoded[2]

    @property
    def val_labels(self) -> torch.Tensor:
        return torch.from_numpy(self.val.labels) if self.decoded is None else self.decoded[3]

    @property
    def val_files(self) -> list[str]:
        return self.val.names

    def decode(self) -> None:
        """Decode both splits into memory (the in-memory regime)."""
        (train, train_labels, bad_train), (val, val_labels, bad_val) = self.train.decode(), self.val.decode()
        self.decoded = (train, train_labels, val, val_labels)
        self.replaced = bad_train + bad_val


def split_indices(labels: np.ndarray, good: np.ndarray, in_val: np.ndarray | None, val_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of the good images: the folders' split, or a seeded stratified one (each
    class gives round(fraction * n) images, at least 1 when it has 2 or more, to validation).
    Both are shuffled with the seed, so that keeping the first N (--limit-train) keeps every class."""
    rng = np.random.default_rng(seed)
    if in_val is not None:
        train, val = np.flatnonzero(good & ~in_val), np.flatnonzero(good & in_val)
    else:
        train, val = [], []
        for c in np.unique(labels[good]):
            members = rng.permutation(np.flatnonzero(good & (labels == c)))
            n_val = min(max(1, round(val_fraction * len(members))), len(members) - 1) if len(members) > 1 else 0
            val.append(members[:n_val])
            train.append(members[n_val:])
        train, val = np.concatenate(train), np.concatenate(val)
    return rng.permutation(train), rng.permutation(val)


def upscaled_images(dims: np.ndarray, good: np.ndarray, size: int) -> tuple[int, tuple[int, int] | None]:
    """(how many good images are upscaled more than 2x to `size`, i.e. their shorter side x 2 < size;
    the (width, height) of the one with the shortest side, None if none is)."""
    shorter = dims.min(axis=1)
    small = good & (shorter * 2 < size)
    if not small.any():
        return 0, None
    smallest = np.flatnonzero(small)[np.argmin(shorter[small])]
    return int(small.sum()), (int(dims[smallest, 0]), int(dims[smallest, 1]))


def load_image_folder(root: str | os.PathLike, size: int, channels: int | None = None, strict: bool = False,
                      val_fraction: float = 0.2, seed: int = 0, *, limit_train: int | None = None,
                      limit_test: int | None = None, stream: bool | Callable[[int], bool] = False
                      ) -> ImageFolderSplits:
    """Read `root`'s manifest, split it, keep the first `limit_train` / `limit_test` images of each split,
    and decode them into memory unless `stream` (or `stream(bytes)`: given the bytes the decoded images
    would take, whether to stream them) says they stay files. `channels` None: 1 if every readable
    image is grayscale, else 3."""
    root = Path(root).expanduser()
    manifest = read_manifest(root)
    good = manifest.good
    skipped = [(str(manifest.path(i)), reason) for i, reason in sorted(manifest.errors.items())]
    in_val = manifest.in_val if manifest.has_layout else None
    _check_classes(root, manifest.class_names, manifest.labels, good, in_val)
    channels = channels or (1 if manifest.gray[good].all() else 3)
    train, val = split_indices(manifest.labels, good, in_val, val_fraction, seed)

    def files(rows: np.ndarray) -> FileSplit:
        size_bytes, mtimes = manifest.stamps[rows, 0], manifest.stamps[rows, 1]
        return FileSplit(root, manifest.paths[rows], manifest.labels[rows], size_bytes, mtimes, size, channels)

    layout = ("train/val folders" if manifest.has_layout
              else f"stratified split (val fraction {val_fraction:g}, seed {seed})")
    data = ImageFolderSplits(files(train[:limit_train]), files(val[:limit_test]), manifest.class_names, layout,
                             skipped, int(good.sum()), *upscaled_images(manifest.dims, good, size))
    decoded_bytes = (len(data.train) + len(data.val)) * channels * size * size
    if not (stream(decoded_bytes) if callable(stream) else stream):
        data.decode()
    if strict and (data.skipped or data.replaced):
        _refuse(data.skipped + data.replaced)
    return data


def _check_classes(root: Path, names, labels, good, in_val) -> None:
    train = good if in_val is None else good & ~in_val
    empty = [names[c] for c in range(len(names)) if not (train & (labels == c)).any()]
    if empty:
        raise UserError(f"Class folder(s) {', '.join(repr(e) for e in empty)} in '{root}' have no readable "
                        "training image (every file there failed to decode). Add images or remove the folder.")
    if in_val is not None and not (good & in_val).any():
        raise UserError(f"The validation folder in '{root}' has no readable image. Add images to it, or "
                        "remove it to split the training images instead (--val-fraction).")


def _refuse(bad: list[tuple[str, str]]) -> None:
    listing = "; ".join(reason for _, reason in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise UserError(f"{len(bad)} image file(s) could not be read (--strict): {listing}. "
                    "Fix or remove them, or drop --strict to skip them.")
