"""Checks a run passes on this machine before anything is allocated or any run folder is made:
input size, device, precision, an estimate of the memory one training step needs, and whether an
image folder's decoded images fit in memory or stream from their files.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from alexnet_lab.engine.builders import input_size
from alexnet_lab.engine.config import TrainConfig, per_rank_batch
from alexnet_lab.engine.device import resolve_device, resolve_precision
from alexnet_lab.errors import UserError, describe
from alexnet_lab.models import build_model, check_input_size

OPTIMIZER_COPIES = 3  # fp32 weights + gradients + SGD momentum buffer, per parameter (an upper count)
ENV_MEMORY_LIMIT = "ALEXNET_LAB_CACHE_MEMORY_MB"  # image folders decoded larger than this stream
DEFAULT_MEMORY_LIMIT_MB = 4096  # also bounds the start-up decode: 4 GiB is ~22,000 RGB images at 256x256
MEMORY_SHARE = 0.5  # of the free host memory (shared by this machine's processes) and the GPU's free memory


def preflight(config: TrainConfig, train_examples: int | None = None, world_size: int = 1) -> None:
    """Raise a UserError if `config` cannot run here. With `train_examples` (the data are loaded),
    also refuse a run whose estimated memory for one training step exceeds what is available."""
    check_input_size(config.model, input_size(config))
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if train_examples is not None:
        batch = max(1, min(per_rank_batch(config, world_size), train_examples))
        check_memory(config.model, input_size(config), batch, precision, device)


def activation_elements(model: nn.Module, batch: int, size: int) -> int:
    """Elements of the input plus every leaf layer's output for one (batch, 1, size, size) forward,
    found by shape propagation on the meta device (no memory, no compute). A training step keeps
    about this many for the backward pass."""
    leaves = [m for m in model.modules() if not list(m.children())]
    total = [batch * size * size]

    def count(module, inputs, output):
        total[0] += output.numel()

    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        model(torch.empty(batch, 1, size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def training_bytes(model_name: str, size: int, batch: int, precision: str = "fp32") -> dict:
    """Estimated bytes of one training step: activations (2 bytes an element under bf16/fp16
    autocast, else 4) and fp32 weights, gradients and momentum."""
    with torch.device("meta"):
        model = build_model(model_name, in_channels=1)  # 3 channels add only to the input and conv1
    model.train()
    element = 2 if precision in ("bf16", "fp16") else 4
    activations = activation_elements(model, batch, size) * element
    state = sum(p.numel() for p in model.parameters()) * 4 * OPTIMIZER_COPIES
    return {"activations": activations, "state": state, "total": activations + state}


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a run on `device`: the GPU's free memory, or the host's MemAvailable
    (Linux); None where it cannot be known (then nothing is refused)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


class NotEnoughMemory(UserError):
    """A run refused before it starts: one training step would not fit in the memory available."""


def check_memory(model_name: str, size: int, batch: int, precision: str, device: torch.device) -> None:
    """Refuse a run whose estimated step memory exceeds the memory available on `device`."""
    need = training_bytes(model_name, size, batch, precision)
    free = available_bytes(device)
    if free is not None and need["total"] > free:
        raise NotEnoughMemory(
            f"Training {model_name} at {size}x{size} with batch {batch} needs about {_gib(need['total'])} "
            f"on {device} ({_gib(need['activations'])} of activations for one batch, {_gib(need['state'])} "
            f"of weights, gradients and momentum; estimated by shape propagation, nothing allocated), but "
            f"only {_gib(free)} is available. Use a smaller --resize or --batch-size.")


def memory_limit_bytes() -> int:
    """$ALEXNET_LAB_CACHE_MEMORY_MB in bytes (default DEFAULT_MEMORY_LIMIT_MB; 0: always stream)."""
    text = os.environ.get(ENV_MEMORY_LIMIT) or str(DEFAULT_MEMORY_LIMIT_MB)  # empty: unset
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = math.nan
    if not 0 <= megabytes < math.inf:  # also refuses nan, inf and -1
        raise UserError(f"${ENV_MEMORY_LIMIT} must be a number of MiB, 0 or more (0: always stream image "
                        f"folders), got {describe(text)}. Set it to e.g. {DEFAULT_MEMORY_LIMIT_MB}, or unset it.")
    return int(megabytes * 2**20)


def in_memory_budget(config: TrainConfig, local_processes: int = 1) -> int:
    """Bytes of decoded images an image folder may take in memory: $ALEXNET_LAB_CACHE_MEMORY_MB, at most
    MEMORY_SHARE of the host's free memory split between this machine's `local_processes` (each holds
    its own copy), and on a CUDA GPU (which holds both splits) at most MEMORY_SHARE of its free memory."""
    budget = memory_limit_bytes()
    host = available_bytes(torch.device("cpu"))
    if host is not None:
        budget = min(budget, int(host * MEMORY_SHARE) // local_processes)
    device = resolve_device(config.device)
    if device.type == "cuda":
        budget = min(budget, int(available_bytes(device) * MEMORY_SHARE))
    return budget


def streams(config: TrainConfig, decoded_bytes: int, local_processes: int = 1) -> bool:
    """Whether an image folder's images (`decoded_bytes` of uint8 pixels, both splits) stream from their
    files: as --data-regime says, or under auto when they exceed `in_memory_budget`."""
    if config.data_regime != "auto":
        return config.data_regime == "stream"
    return decoded_bytes > in_memory_budget(config, local_processes)
