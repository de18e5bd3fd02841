"""Building the pieces a run needs from its config: data loaders, model, optimizer, schedule.

Shared by `fit`, `evaluate`, `bench` and the d2l API so there is one way to do each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from alexnet_lab.data import CLASS_NAMES, BatchLoader
from alexnet_lab.data.augment_2012 import CROP_FRACTION
from alexnet_lab.data.sources import load_source
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.errors import UserError
from alexnet_lab.models import build_model, get_spec


@dataclass
class Splits:
    train_images: torch.Tensor  # (N, 28, 28) or (N, C, S, S) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    class_names: tuple[str, ...] = CLASS_NAMES
    notes: list[str] = field(default_factory=list)  # for the user to read once (skipped files)

    @property
    def channels(self) -> int:
        return 1 if self.train_images.ndim == 3 else self.train_images.shape[1]


def load_splits(data_dir: str | None = None, limit_train: int | None = None,
                limit_test: int | None = None, **source_options) -> Splits:
    """The data as uint8 tensors (Fashion-MNIST unless `source_options` say otherwise, see
    `data.sources.load_source`); the limits keep the first N examples of each split."""
    ds = load_source(data_dir=data_dir, **source_options)
    return Splits(ds.train_images[:limit_train], ds.train_labels[:limit_train], ds.test_images[:limit_test],
                  ds.test_labels[:limit_test], ds.source, ds.class_names, ds.notes)


def splits_for(config: TrainConfig) -> Splits:
    """The data a config trains on (its --data, --channels, --val-fraction, --strict, limits)."""
    return load_splits(config.data_dir, config.limit_train, config.limit_test, spec=config.data,
                       image_size=stored_size(config), channels=config.channels,
                       val_fraction=config.val_fraction, seed=config.seed, strict=config.strict)


def input_size(config: TrainConfig) -> int:
    return config.resize or get_spec(config.model).input_size


def uses_2012_crops(config: TrainConfig) -> bool:
    """Whether training takes the 2012 paper's random crops (and evaluation its centre crop)."""
    return config.augment and get_spec(config.model).augmentation == "alexnet-2012"


def stored_size(config: TrainConfig) -> int:
    """The side image folders are decoded at: the input size, or for the 2012 crops 256/224 of it
    (the paper's 256-pixel images for 224-pixel crops)."""
    size = input_size(config)
    return round(size / CROP_FRACTION) if uses_2012_crops(config) else size


def make_loaders(config: TrainConfig, splits: Splits, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> tuple[BatchLoader, BatchLoader]:
    if config.batch_size % world_size:
        raise UserError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                        f"number of processes ({world_size}).")
    per_rank = config.batch_size // world_size
    size = input_size(config)
    train = BatchLoader(splits.train_images, splits.train_labels, per_rank, shuffle=True, resize=size,
                        device=device, augment=config.augment, seed=config.seed, drop_last=False,
                        rank=rank, world_size=world_size, augmentation=get_spec(config.model).augmentation)
    # even_shards=False: under DDP every test example is evaluated exactly once (ranks may differ by one).
    test = BatchLoader(splits.test_images, splits.test_labels, max(per_rank, 256), shuffle=False,
                       resize=size, device=device, rank=rank, world_size=world_size, even_shards=False,
                       center_crop=uses_2012_crops(config))
    return train, test


def init_weights(model: nn.Module) -> None:
    """d2l's train_ch6 init: xavier_uniform_ on every Conv2d/Linear weight, biases untouched."""
    for m in model.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)


def valid_input_sizes(model_name: str, sizes=range(8, 513)) -> list[int]:
    """Input sides the model accepts, found by shape propagation on the meta device (no compute)."""
    with torch.device("meta"):
        model = build_model(model_name)
    model.eval()  # BatchNorm in training mode rejects a batch of one sample per channel
    channels = get_spec(model_name).in_channels
    ok = []
    for s in sizes:
        try:
            model(torch.empty(1, channels, s, s, device="meta"))
            ok.append(s)
        except RuntimeError:
            pass
    return ok


def check_input_size(model_name: str, size: int) -> None:
    """Raise a UserError naming the sizes that work if `model_name` cannot take size x size input."""
    if valid_input_sizes(model_name, [size]):
        return
    valid = valid_input_sizes(model_name)
    if not valid:
        raise UserError(f"Input size {size} (--resize / --input-size) does not fit model '{model_name}', and no size from 8 to 512 does.")
    contiguous = valid[-1] - valid[0] + 1 == len(valid)
    span = f"{valid[0]}..{valid[-1]}" if contiguous else ", ".join(map(str, valid[:8])) + ("..." if len(valid) > 8 else "")
    raise UserError(f"Input size {size} (--resize / --input-size) does not fit model '{model_name}' (sizes that work: {span}). "
                    f"The smallest size that works is {valid[0]}.")


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # foreach=True: one multi-tensor kernel per parameter group instead of one per tensor.
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0,
                           weight_decay=config.weight_decay, foreach=True)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule; `constant` keeps lr fixed (the book's recipe)."""
    if config.schedule == "onecycle":
        warm = max(1, int(config.warmup_frac * total_steps))

        def factor(step: int) -> float:  # linear up to 1, then linear down to 0
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total_steps - step) / max(1, total_steps - warm))
    elif config.schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def model_options(splits: Splits) -> dict:
    """What a model adapts to the data: its input channels and its number of classes."""
    return {"in_channels": splits.channels, "num_classes": len(splits.class_names)}


def prepare_model(config: TrainConfig, device: torch.device, **model_kwargs) -> nn.Module:
    """Build (with `model_kwargs`, e.g. `model_options(splits)`), initialise and place the model;
    channels-last when asked."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, **model_kwargs)
    check_input_size(config.model, input_size(config))
    if config.init == "xavier":
        init_weights(model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model
