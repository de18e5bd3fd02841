"""What a measurement ran on: CPU model and vector ISA, threads, GPU, torch version.

Every speed figure this project prints or records carries this description beside it.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

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


def describe_machine(device: torch.device) -> dict:
    model, isa = cpu_model_and_flags()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    if device.type == "mps":
        gpu = "Apple GPU (mps)"
    return {"cpu": model, "isa": isa, "threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
            "device": str(device)}


def format_machine(info: dict) -> str:
    cpu = f"{info['cpu']} ({'+'.join(info['isa']) or 'no AVX'}), {info['threads']} threads"
    gpu = f"; GPU {info['gpu']}" + (f", CUDA {info['cuda']}" if info.get("cuda") else "") if info["gpu"] else ""
    return f"{cpu}{gpu}; torch {info['torch']}"
