"""A quick, measured estimate of training speed: time a few real steps before committing to a run."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.device import resolve_device, resolve_precision, synchronize
from alexnet_lab.engine.setup import build_optimizer, input_size, prepare_model
from alexnet_lab.engine.trainer import _to_input, train_step
from alexnet_lab.models import get_spec


def seconds_per_step(config: TrainConfig, steps: int = 2, warmup: int = 1) -> float:
    """Median seconds of one training step of `config` on random data (after warm-up)."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    channels = config.channels or get_spec(config.model).in_channels
    model = prepare_model(config, device, in_channels=channels)
    optimizer = build_optimizer(config, model)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_fn = nn.CrossEntropyLoss()
    size = input_size(config)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(config.batch_size, channels, size, size, generator=gen).to(device)
    labels = torch.randint(0, 10, (config.batch_size,), generator=gen).to(device)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        train_step(model, loss_fn, optimizer, scaler, _to_input(images, config.channels_last), labels,
                   precision, device)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
