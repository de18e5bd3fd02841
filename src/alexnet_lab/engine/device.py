"""Device and numeric-precision choices: `resolve_device`, `resolve_precision`, `autocast`, what each
backend supports (CUDA, Apple's MPS, the CPU), checked before a run starts, and the CPU's name and ISA.
"""

from __future__ import annotations

import contextlib
import platform
from contextlib import contextmanager
from pathlib import Path

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


# The CPU features that decide how fast the training step can be (oneDNN's kernels).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model_and_flags(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """The CPU's model name and which of ISA_FLAGS it has (from /proc/cpuinfo where there is one)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model = value.strip()
        elif key == "flags":
            flags = set(value.split())
    return model, [f for f in ISA_FLAGS if f in flags]


def torch_version() -> tuple[int, int]:
    """(major, minor) of the running torch, e.g. (2, 11)."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


# What Apple's MPS backend supports, by torch version (release notes; pytorch/pytorch#99272, #139386,
# #142397): fp16 autocast from 2.5, GradScaler (needed by fp16 training) from 2.8, bf16 autocast
# from 2.6 and only on macOS 14 or later, torch.compile (inductor's Metal backend) from 2.7.
MPS_FP16_AUTOCAST, MPS_GRAD_SCALER, MPS_BF16_AUTOCAST, MPS_COMPILE = (2, 5), (2, 8), (2, 6), (2, 7)


def mps_precisions() -> list[str]:
    """The precisions this torch and macOS can train in on an Apple GPU."""
    ok = ["fp32"]
    if torch_version() >= max(MPS_FP16_AUTOCAST, MPS_GRAD_SCALER):  # fp16 training needs both
        ok.append("fp16")
    if torch_version() >= MPS_BF16_AUTOCAST and torch.backends.mps.is_macos_or_newer(14, 0):
        ok.append("bf16")
    return ok


def resolve_precision(name: str, device: torch.device) -> str:
    """An explicit precision checked against the device (one it cannot run is a UserError); auto by a
    capability rule: bf16 on CPUs with native bf16 and on GPUs with bf16 tensor cores (compute capability
    8.0+), fp16 (with GradScaler) on older CUDA GPUs and on Apple GPUs, else fp32. A rule, not a
    measurement (bf16 that a CPU "supports" may be slower than its fp32): the training step measures
    instead (engine/numerics.py); the rule serves where nothing is measured (torchrun's processes, the
    memory preflight, a checkpoint that does not record its numerics)."""
    if device.type == "mps":
        return _mps_precision(name)
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise UserError("--precision fp16 is not supported on the CPU; use bf16 or fp32.")
        return name
    if device.type == "cuda":
        # Without emulation: pre-Ampere GPUs (V100, T4) report bf16 as supported but emulate it slowly.
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def _mps_precision(name: str) -> str:
    supported = mps_precisions()
    if name == "auto":  # half precision runs at twice fp32's rate on Apple GPUs
        return "fp16" if "fp16" in supported else "fp32"
    if name not in supported:
        need = {"fp16": f"torch >= {'.'.join(map(str, MPS_GRAD_SCALER))} (fp16 autocast with GradScaler)",
                "bf16": f"torch >= {'.'.join(map(str, MPS_BF16_AUTOCAST))} and macOS 14 or later"}[name]
        raise UserError(f"--precision {name} on an Apple GPU (mps) needs {need}; this is torch "
                        f"{torch.__version__}. Use --precision {' or '.join(supported)} (or auto).")
    return name


def check_compile(device: torch.device) -> None:
    """Raise a UserError where --compile cannot work on `device` with this torch."""
    if device.type == "mps" and torch_version() < MPS_COMPILE:
        raise UserError(f"--compile on an Apple GPU (mps) needs torch >= {'.'.join(map(str, MPS_COMPILE))} "
                        f"(inductor's Metal backend); this is torch {torch.__version__}. Drop --compile.")


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
