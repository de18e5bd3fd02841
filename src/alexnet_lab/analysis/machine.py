"""What a measurement ran on: CPU model and vector ISA, threads, GPU, torch version.

Every speed figure this project prints or records carries this description beside it.
"""

from __future__ import annotations

import torch

from alexnet_lab.engine.device import ISA_FLAGS, cpu_model_and_flags  # noqa: F401  (ISA_FLAGS: benchmarks read it here)


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
