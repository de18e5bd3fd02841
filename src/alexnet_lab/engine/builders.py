"""Builders: the pieces a run needs, made from its config (data splits and loaders, model, optimizer, schedule).

Shared by `fit`, `evaluate`, `bench` and the d2l API so there is one way to do each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
from torch import nn

from alexnet_lab.data import CLASS_NAMES, BatchLoader, to_float_batch
from alexnet_lab.data.augment_2012 import CROP_FRACTION
from alexnet_lab.data.fingerprint import data_fingerprint, files_fingerprint
from alexnet_lab.data.imagefolder import FileSplit, pixels
from alexnet_lab.data.sources import image_folder_of, load_source
from alexnet_lab.data.streaming import batch_loader, default_workers
from alexnet_lab.engine.config import TrainConfig, per_rank_batch
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.distributed import launched_local_world_size
from alexnet_lab.engine.model_setup import set_up_model
from alexnet_lab.errors import UserError
from alexnet_lab.models import build_model, check_input_size, get_spec


@dataclass
class Splits:
    train_images: torch.Tensor | FileSplit  # (N, 28, 28) or (N, C, S, S) uint8, or a streamed folder's files
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor | FileSplit
    test_labels: torch.Tensor
    source: str
    class_names: tuple[str, ...] = CLASS_NAMES
    notes: list[str] = field(default_factory=list)  # for the user to read once (skipped files)
    test_files: list[str] | None = None  # image folders: test_images[i]'s file, relative to the folder
    files: tuple[FileSplit, FileSplit] | None = None  # image folders: each split's files, in memory or streamed

    @property
    def channels(self) -> int:
        return 1 if self.train_images.ndim == 3 else self.train_images.shape[1]

    @cached_property
    def fingerprint(self) -> dict:
        """Sizes and hash of both splits (data/fingerprint.py), computed once: of the tensors' content, or
        of an image folder's manifest (the same whether its images are held in memory or streamed)."""
        if self.files is not None:
            return {"train": files_fingerprint(self.files[0]), "test": files_fingerprint(self.files[1])}
        return data_fingerprint(self.train_images, self.train_labels, self.test_images, self.test_labels)

    def head(self, limit_train: int | None, limit_test: int | None) -> "Splits":
        """The first `limit_train` / `limit_test` examples of each split (views, no copy)."""
        files = None if self.files is None else (self.files[0][:limit_train], self.files[1][:limit_test])
        return Splits(self.train_images[:limit_train], self.train_labels[:limit_train],
                      self.test_images[:limit_test], self.test_labels[:limit_test], self.source,
                      self.class_names, self.notes, _head(self.test_files, limit_test), files)


def _load_splits(data_dir: str | None = None, **source_options) -> Splits:
    """The data as uint8 tensors, or a streamed image folder's files (`data.sources.load_source` with
    `source_options`). Private: every command enters the data through `splits_for`."""
    ds = load_source(data_dir=data_dir, **source_options)
    splits = Splits(ds.train_images, ds.train_labels, ds.test_images, ds.test_labels, ds.source, ds.class_names,
                    ds.notes, ds.test_files, ds.files)
    for split, images in (("training", splits.train_images), ("test", splits.test_images)):
        if len(images) == 0:
            raise UserError(f"The {split} set in '{ds.source}' holds no images: a run needs at least one "
                            "training and one test image. Point --data-dir at a complete data set.")
    return splits


def _head(items: list | None, limit: int | None) -> list | None:
    return None if items is None else items[:limit]


def splits_for(config: TrainConfig) -> Splits:
    """The data a config trains and tests on: the one door into the data for every command (its --data,
    --data-dir, --channels, --val-fraction, --strict, --limit-train/--limit-test; an image folder's
    validation split is seeded by --seed). An image folder is held in memory or streamed from its files
    as --data-regime says, under auto as preflight judges its decoded size against the memory here."""
    from alexnet_lab.engine.preflight import streams  # (preflight builds on this module)

    if config.data_regime == "stream" and image_folder_of(config.data) is None:
        raise UserError("--data-regime stream reads image files as batches need them: it needs --data "
                        "imagefolder:DIR. Fashion-MNIST (47 MB) is always held in memory: leave the flag out.")
    return _load_splits(config.data_dir, spec=config.data, limit_train=config.limit_train,
                        limit_test=config.limit_test, image_size=stored_size(config), channels=config.channels,
                        val_fraction=config.val_fraction, seed=config.seed, strict=config.strict,
                        stream=lambda decoded_bytes: streams(config, decoded_bytes, launched_local_world_size()))


def splits_for_model(config: TrainConfig, channels: int) -> Splits:
    """The data of `config` for a trained model that takes `channels`-channel input: read as the
    config says (reusing its image cache), and read again with `channels` when that gives others
    (an image folder whose channels were inferred, since changed, or a --channels that differs)."""
    splits = splits_for(config)
    return splits if splits.channels == channels else splits_for(config.replace(channels=channels))


def input_size(config: TrainConfig) -> int:
    return config.resize or get_spec(config.model).input_size


def uses_2012_crops(config: TrainConfig) -> bool:
    """Whether training takes the 2012 paper's random crops, --augment crop (and evaluation its centre crop)."""
    return "crop" in config.augment.split("+")


def stored_size(config: TrainConfig) -> int:
    """The side image folders are decoded at: the input size, or for the 2012 crops 256/224 of it
    (the paper's 256-pixel images for 224-pixel crops)."""
    size = input_size(config)
    return round(size / CROP_FRACTION) if uses_2012_crops(config) else size


def evaluation_batch_size(config: TrainConfig, world_size: int = 1, device: torch.device | None = None) -> int:
    """Test batches are at least 256 images, 1024 on a CUDA GPU (which that keeps busy; AlexNet at
    224x224 in fp32 needs ~2 GB of activations for it): no gradients are kept, so larger batches fit."""
    device = device if device is not None else resolve_device(config.device)
    return max(per_rank_batch(config, world_size), 1024 if device.type == "cuda" else 256)


def make_loaders(config: TrainConfig, splits: Splits, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> tuple[BatchLoader, BatchLoader]:
    """The training and test loaders: in memory, or streaming a folder's files (data/streaming.py) with
    this machine's CPUs shared between its processes' worker processes."""
    per_rank = per_rank_batch(config, world_size)
    size = input_size(config)
    train = batch_loader(splits.train_images, splits.train_labels, per_rank, shuffle=True, resize=size,
                         device=device, augment=config.augment, seed=config.seed, drop_last=False,
                         rank=rank, world_size=world_size, workers=default_workers(launched_local_world_size()))
    return train, make_test_loader(config, splits, device, rank, world_size)


def make_test_loader(config: TrainConfig, splits: Splits, device: torch.device,
                     rank: int = 0, world_size: int = 1) -> BatchLoader:
    """The test batches of every evaluation (training's and a checkpoint's): in order, at the input
    size, centre-cropped for the 2012 crops, `evaluation_batch_size` images each."""
    # even_shards=False: under DDP every test example is evaluated exactly once (ranks may differ by one).
    return batch_loader(splits.test_images, splits.test_labels, evaluation_batch_size(config, world_size, device),
                        shuffle=False, resize=input_size(config), device=device, rank=rank, world_size=world_size,
                        even_shards=False, center_crop=uses_2012_crops(config),
                        workers=default_workers(launched_local_world_size()))


WHITENING_IMAGES = 2048  # training images a whitening layer is fitted to (models/whitening.py)


def whitening_images(config: TrainConfig, splits: Splits) -> torch.Tensor:
    """The first training images as the model sees them (float, at its input size, not augmented)."""
    return to_float_batch(pixels(splits.train_images, slice(WHITENING_IMAGES)), input_size(config))


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    budget_used: Callable[[], float] | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule; `constant` keeps lr fixed (the book's recipe).

    `budget_used` (a run with --time-budget-s) returns the share of the time budget spent so far; the
    schedule then stands at max(steps done, that share of `total_steps`), so it reaches its end (one-cycle
    and cosine: lr 0) when the time runs out, however much slower the steps turned out than planned."""
    factor = _schedule_factor(config, total_steps)
    if budget_used is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    # Read at every scheduler.step(): a perf_counter() call, no device sync.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: factor(max(step, budget_used() * total_steps)))


def _schedule_factor(config: TrainConfig, total_steps: int) -> Callable[[float], float]:
    """The lr multiplier at a (possibly fractional) position in `total_steps` steps."""
    if config.schedule == "onecycle":
        warm = max(1, int(config.warmup_frac * total_steps))

        def factor(step: float) -> float:  # linear up to 1, then linear down to 0
            if step < warm:
                return min(1.0, (step + 1) / warm)
            return max(0.0, (total_steps - step) / max(1, total_steps - warm))
    elif config.schedule == "cosine":
        def factor(step: float) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    else:
        def factor(step: float) -> float:
            return 1.0
    return factor


def model_options(splits: Splits) -> dict:
    """What a model adapts to the data: its input channels and its number of classes."""
    return {"in_channels": splits.channels, "num_classes": len(splits.class_names)}


def prepare_model(config: TrainConfig, device: torch.device, **model_kwargs) -> nn.Module:
    """Build (with `model_kwargs`, e.g. `model_options(splits)`), initialise and place the model;
    channels-last when asked."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, **model_kwargs)
    check_input_size(config.model, input_size(config))
    set_up_model(config, model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model
