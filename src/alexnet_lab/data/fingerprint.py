"""A data set's fingerprint: sizes and a hash of the loaded tensors' content, or of an image folder's manifest.

A checkpoint stores it, so a resumed run can tell that it continues on the data it started with.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from alexnet_lab.data.imagefolder import FileSplit

# The whole content is hashed, not a sample: a sample misses a changed or reordered image, and
# hashing is one sequential read of memory already loaded (Fashion-MNIST: 55 MB of uint8 images,
# int64 labels), small next to decoding the files. BLAKE2b: fast in CPython's hashlib, 128 bits.
DIGEST_BYTES = 16


def split_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> dict:
    """{"examples", "shape", "blake2b"} of one split: dtype, shape and bytes of images and labels."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for tensor in (images, labels):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.reshape(-1).view("u1"))
    return {"examples": int(images.shape[0]), "shape": list(images.shape), "blake2b": digest.hexdigest()}


def data_fingerprint(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                     test_labels: torch.Tensor) -> dict:
    return {"train": split_fingerprint(train_images, train_labels),
            "test": split_fingerprint(test_images, test_labels)}


def files_fingerprint(files: FileSplit) -> dict:
    """`split_fingerprint`'s {"examples", "shape", "blake2b"} of an image folder's split from its manifest,
    not its pixels: each file's relative path, size, modification time and label, in the split's order,
    and the decoded shape (whichever regime holds the images: in memory or streamed). No file is read,
    so a run on 40,000 images starts at once; a file rewritten in place with both its size and its
    modification time set back is not seen (as make and rsync judge a change)."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    digest.update(f"files{list(files.shape)}{files.paths.dtype}".encode())
    for array in (files.paths, files.sizes, files.mtimes, files.labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    return {"examples": len(files), "shape": list(files.shape), "blake2b": digest.hexdigest()}


def describe_difference(saved: dict, now: dict) -> str | None:
    """None if equal, else e.g. "training set: 2,000 images (blake2b 3f2a...) then, 1,000 (9c1e...) now"."""
    parts = []
    for split, name in (("train", "training set"), ("test", "test set")):
        a, b = saved.get(split) or {}, now.get(split) or {}
        if a != b:
            parts.append(f"{name}: {a.get('examples', 0):,} images (blake2b {str(a.get('blake2b'))[:12]}...) "
                         f"then, {b.get('examples', 0):,} ({str(b.get('blake2b'))[:12]}...) now")
    return "; ".join(parts) or None
