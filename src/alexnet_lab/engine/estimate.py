"""A quick, measured estimate of training speed: time a few real steps before committing to a run."""

from __future__ import annotations

import statistics
import time

import torch

from alexnet_lab.engine.builders import input_size
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.device import synchronize
from alexnet_lab.engine.step import build_training_step


def seconds_per_step(config: TrainConfig, steps: int = 2, warmup: int = 1) -> float:
    """Median seconds of one training step of `config` on random data (after warm-up).

    The step is the one `fit` runs (same builder: numerics, optimizer, schedule, loss, compile)."""
    step = build_training_step(config, total_steps=warmup + steps)
    device = step.device
    size = input_size(config)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(config.batch_size, 1, size, size, generator=gen).to(device)
    labels = torch.randint(0, 10, (config.batch_size,), generator=gen).to(device)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        step(images, labels)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
