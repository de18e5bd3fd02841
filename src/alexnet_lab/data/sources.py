"""Data sources: `--data fashion-mnist` or `--data imagefolder:DIR` -> the same uint8 tensors (or, for
an image folder that streams, its files).

Every command (train, evaluate, export, bench, the d2l API) gets its data through `load_source`, so
there is one data path whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from alexnet_lab.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from alexnet_lab.data.imagefolder import FileSplit, load_image_folder
from alexnet_lab.errors import UserError, describe

FASHION_MNIST = "fashion-mnist"
IMAGEFOLDER = "imagefolder:"


@dataclass
class Dataset:
    """Two splits as uint8 images (N, H, W) or (N, C, H, W) and int64 labels (N,); a streamed image
    folder's images are its files (`FileSplit`), decoded as batches need them."""
    train_images: torch.Tensor | FileSplit
    train_labels: torch.Tensor
    test_images: torch.Tensor | FileSplit
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    source: str                                  # where the data came from, in words
    notes: list[str] = field(default_factory=list)  # things the user should hear once (skipped files)
    test_files: list[str] | None = None  # image folders: test_images[i]'s file, relative to the folder
    files: tuple[FileSplit, FileSplit] | None = None  # image folders: each split's files (the fingerprint's)

    @property
    def channels(self) -> int:
        return 1 if self.train_images.ndim == 3 else self.train_images.shape[1]


def check_data_spec(spec: str) -> None:
    if spec != FASHION_MNIST and not (spec.startswith(IMAGEFOLDER) and len(spec) > len(IMAGEFOLDER)):
        raise UserError(f"--data must be '{FASHION_MNIST}' or '{IMAGEFOLDER}DIR' (a folder of class "
                        f"sub-folders), got {describe(spec)}.")


def image_folder_of(spec: str) -> Path | None:
    return Path(spec[len(IMAGEFOLDER):]).expanduser() if spec.startswith(IMAGEFOLDER) else None


def load_source(spec: str = FASHION_MNIST, *, data_dir: str | None = None, image_size: int = 224,
                channels: int | None = None, val_fraction: float = 0.2, seed: int = 0,
                strict: bool = False, limit_train: int | None = None, limit_test: int | None = None,
                stream: bool | Callable[[int], bool] = False) -> Dataset:
    """The data `spec` names, the first `limit_train` / `limit_test` examples of each split.
    Fashion-MNIST: its train/test files from `data_dir` or the usual places (`channels=3` repeats the
    gray channel, without copying). Image folders: `image_size` x `image_size` with `channels` (None: 1
    if every image is grayscale, else 3), split by their train/val folders or by `val_fraction`
    (stratified, seeded), decoded into memory, or streamed when `stream` (or `stream(bytes)`, given
    the bytes the decoded images would take) says so."""
    check_data_spec(spec)
    folder = image_folder_of(spec)
    if folder is None:
        ds = load_fashion_mnist(data_dir)
        train_x, train_y = (torch.from_numpy(a[:limit_train].copy()) for a in (ds.train_images, ds.train_labels))
        test_x, test_y = (torch.from_numpy(a[:limit_test].copy()) for a in (ds.test_images, ds.test_labels))
        train_y, test_y = train_y.long(), test_y.long()
        if channels == 3:  # (N, 28, 28) -> (N, 3, 28, 28), an expanded view
            train_x, test_x = (x.unsqueeze(1).expand(-1, 3, -1, -1) for x in (train_x, test_x))
        return Dataset(train_x, train_y, test_x, test_y, CLASS_NAMES, ds.source)
    data = load_image_folder(folder, image_size, channels, strict, val_fraction, seed, limit_train=limit_train,
                             limit_test=limit_test, stream=stream)
    if len(data.val) == 0:  # (an empty val/ folder is refused by load_image_folder)
        raise UserError(f"Image folder '{folder}' cannot be split into training and validation images: every "
                        "class has only one readable image, and a class gives validation images (--val-fraction) "
                        "only when it has two or more. Add images to the class folders, or put validation "
                        "images in DIR/val/<class>/ beside DIR/train/<class>/.")
    notes = []
    if data.skipped:
        notes.append(f"Skipped {len(data.skipped)} unreadable image file(s) (--strict refuses them):\n  "
                     + "\n  ".join(reason for _, reason in data.skipped))
    if data.replaced:
        notes.append(f"Replaced {len(data.replaced)} image file(s) that failed to decode, each by the next image "
                     "of its split that decodes (--strict refuses them):\n  "
                     + "\n  ".join(reason for _, reason in data.replaced))
    if data.upscaled:
        notes.append(upscale_note(data.upscaled, data.readable, data.smallest, image_size))
    where = ("decoded in memory" if data.decoded is not None
             else "streamed: decoded by worker processes as batches need them")
    source = (f"{folder}: {len(data.class_names)} classes, {len(data.train)} train / "
              f"{len(data.val)} val images ({data.layout}), {data.channels}x{image_size}x{image_size} "
              f"uint8, {where}")
    return Dataset(data.train_images, data.train_labels, data.val_images, data.val_labels,
                   data.class_names, source, notes, data.val_files, (data.train, data.val))


def upscale_note(count: int, total: int, smallest: tuple[int, int], size: int) -> str:
    """The notice that `count` of `total` images are upscaled more than 2x to `size` (their shorter side
    under size / 2): the model then sees them blurred, with no detail the files did not have."""
    return (f"Note: {count} of {total} images have a side shorter than {size / 2:g} px (the smallest "
            f"{smallest[0]}x{smallest[1]}) and are upscaled more than 2x to {size}x{size}: the model sees them "
            "blurred. Larger images, or a model with a smaller input (--model, --resize), avoid it.")
