"""Device and numeric-precision choices: `resolve_device`, `resolve_precision`, `autocast`."""

from __future__ import annotations

import contextlib
from contextlib import contextmanager

import torch

from alexnet_lab.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """auto prefers cuda, then mps, then cpu. A device that is not there is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible. Use --device cpu or auto.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but no Apple GPU is available. Use --device cpu or auto.")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN can run bf16 natively (AVX512-BF16 or AMX), so autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """auto -> bf16 where the hardware runs it fast, else fp32."""
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise UserError("--precision fp16 is not supported on the CPU; use bf16 or fp32.")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device):
    """Autocast context for bf16/fp16; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a host-device sync point: only at timing boundaries)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextmanager
def backend_flags(device: torch.device, deterministic: bool):
    """cudnn autotuning / determinism only for the duration of training, restored after."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled())
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2])
