"""Data sources: `--data fashion-mnist` or `--data imagefolder:DIR` -> the same uint8 tensors.

Every command (train, evaluate, export, bench, the d2l API) gets its data through `load_source`, so
there is one data path whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from alexnet_lab.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from alexnet_lab.data.imagefolder import load_image_folder
from alexnet_lab.errors import UserError, describe

FASHION_MNIST = "fashion-mnist"
IMAGEFOLDER = "imagefolder:"


@dataclass
class Dataset:
    """Two splits as uint8 images (N, H, W) or (N, C, H, W) and int64 labels (N,)."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    source: str                                  # where the data came from, in words
    notes: list[str] = field(default_factory=list)  # things the user should hear once (skipped files)
    test_files: list[str] | None = None  # image folders: test_images[i]'s file, relative to the folder

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
                strict: bool = False) -> Dataset:
    """The data `spec` names. Fashion-MNIST: its train/test files from `data_dir` or the usual places
    (`channels=3` repeats the gray channel, without copying). Image folders: decoded at
    `image_size` x `image_size` with `channels` (None: 1 if every image is grayscale, else 3), split
    by their train/val folders or by `val_fraction` (stratified, seeded)."""
    check_data_spec(spec)
    folder = image_folder_of(spec)
    if folder is None:
        ds = load_fashion_mnist(data_dir)
        train_x, train_y = torch.from_numpy(ds.train_images.copy()), torch.from_numpy(ds.train_labels.astype("int64"))
        test_x, test_y = torch.from_numpy(ds.test_images.copy()), torch.from_numpy(ds.test_labels.astype("int64"))
        if channels == 3:  # (N, 28, 28) -> (N, 3, 28, 28), an expanded view
            train_x, test_x = (x.unsqueeze(1).expand(-1, 3, -1, -1) for x in (train_x, test_x))
        return Dataset(train_x, train_y, test_x, test_y, CLASS_NAMES, ds.source)
    data = load_image_folder(folder, image_size, channels, strict, val_fraction, seed)
    if len(data.val_labels) == 0:  # (an empty val/ folder is refused by load_image_folder)
        raise UserError(f"Image folder '{folder}' cannot be split into training and validation images: every "
                        "class has only one readable image, and a class gives validation images (--val-fraction) "
                        "only when it has two or more. Add images to the class folders, or put validation "
                        "images in DIR/val/<class>/ beside DIR/train/<class>/.")
    notes = []
    if data.skipped:
        notes.append(f"Skipped {len(data.skipped)} unreadable image file(s) (--strict refuses them):\n  "
                     + "\n  ".join(reason for _, reason in data.skipped))
    if data.upscaled:
        notes.append(upscale_note(data.upscaled, len(data.train_labels) + len(data.val_labels), data.smallest,
                                  image_size))
    where = f"memory-mapped from {data.cache_file}" if data.cache_file else "decoded in memory"
    source = (f"{folder}: {len(data.class_names)} classes, {len(data.train_labels)} train / "
              f"{len(data.val_labels)} val images ({data.layout}), {data.channels}x{image_size}x{image_size} "
              f"uint8, {where}")
    return Dataset(torch.from_numpy(data.train_images), torch.from_numpy(data.train_labels),
                   torch.from_numpy(data.val_images), torch.from_numpy(data.val_labels),
                   data.class_names, source, notes, data.val_files)


def upscale_note(count: int, total: int, smallest: tuple[int, int], size: int) -> str:
    """The notice that `count` of `total` images are upscaled more than 2x to `size` (their shorter side
    under size / 2): the model then sees them blurred, with no detail the files did not have."""
    return (f"Note: {count} of {total} images have a side shorter than {size / 2:g} px (the smallest "
            f"{smallest[0]}x{smallest[1]}) and are upscaled more than 2x to {size}x{size}: the model sees them "
            "blurred. Larger images, or a model with a smaller input (--model, --resize), avoid it.")
