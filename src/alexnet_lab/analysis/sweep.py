"""Exercise 3: one training run per batch size, each in its own process so its peak memory is its own.

The parent launches `python -m alexnet_lab.analysis.sweep CONFIG_JSON RUN_DIR`; the child trains into a run
folder (engine.run.train) and writes result.json. A run that runs out of memory is recorded as such, never a crash.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from alexnet_lab import files
from alexnet_lab.engine.config import TrainConfig

OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or an allocator's RuntimeError saying so."""
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int | None:
    """Resident memory now (Linux /proc only; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def train_measured(config: TrainConfig, out: Path) -> dict:
    """Child side: train `config` into run folder `out`; return the result with its peak memory."""
    import torch

    from alexnet_lab.engine import run
    from alexnet_lab.engine.device import resolve_device
    from alexnet_lab.engine.preflight import NotEnoughMemory
    from alexnet_lab.engine.trainer import Callback

    device = resolve_device(config.device)
    before: dict = {}

    class MemoryProbe(Callback):
        def on_train_start(self, info: dict) -> None:  # data and model loaded, no step taken yet
            before["rss"] = current_rss_bytes()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {"batch_size": config.batch_size, "lr": config.lr, "device": str(device)}
    try:
        summary = run.train(config, out, callbacks=[MemoryProbe()])  # no curves: `compare` draws them
        result.update(status="ok", test_acc=summary["test_acc"], train_acc=summary["train_acc"],
                      train_loss=summary["train_loss"], examples_per_sec=summary["examples_per_sec"],
                      steps=summary["steps"], wall_seconds=summary["wall_seconds"])
    except Exception as exc:  # noqa: BLE001  (only out-of-memory is recorded; anything else re-raises)
        if not (is_out_of_memory(exc) or isinstance(exc, NotEnoughMemory)):  # (refused by preflight's estimate)
            raise
        result.update(status="out_of_memory", detail=str(exc).splitlines()[0][:300])
    # Peak memory: CUDA -> the caching allocator's peak of live tensors; CPU -> the process's peak RSS
    # (everything: interpreter, torch, the dataset, the model, activations, optimizer state).
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        result["memory_kind"] = "cuda max_memory_allocated"
    else:
        result["peak_memory_bytes"] = peak_rss_bytes()
        result["memory_kind"] = "peak RSS of the training process"
        result["rss_before_training_bytes"] = before.get("rss")
    return result


def child_command(config: TrainConfig, out: Path) -> list[str]:
    return [sys.executable, "-m", "alexnet_lab.analysis.sweep", json.dumps(config.to_dict()), str(out)]


def run_child(command: list[str], out: Path, timeout_s: float | None = None) -> dict:
    """Parent side: run one child and read its result.json; a child the kernel killed (SIGKILL, the
    out-of-memory killer's signal) counts as out of memory; any other failure is recorded as failed."""
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "result.json"
    result_path.unlink(missing_ok=True)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "detail": f"ran longer than {timeout_s:.0f} s"}
    if proc.returncode == 0 and result_path.is_file():
        return json.loads(result_path.read_text())
    if proc.returncode == -signal.SIGKILL:
        return {"status": "out_of_memory", "detail": "killed by SIGKILL (the kernel's out-of-memory killer)"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "failed", "detail": " | ".join(tail)[:500], "returncode": proc.returncode}


def sweep_configs(base: TrainConfig, batch_sizes: list[int], lr_scaling: str = "none",
                  reference_batch: int = 128) -> list[TrainConfig]:
    """One config per batch size; `linear` scales the lr by batch/reference_batch (Goyal et al. 2017)."""
    scale = (lambda b: b / reference_batch) if lr_scaling == "linear" else (lambda b: 1.0)
    return [base.replace(batch_size=b, lr=base.lr * scale(b)) for b in batch_sizes]


def sweep(configs: list[TrainConfig], out_root: Path, launch=run_child, timeout_s: float | None = None,
          on_result=None) -> list[dict]:
    """Run every config in its own process (via `launch(command, out, timeout_s)`), in order."""
    results = []
    for config in configs:
        out = out_root / f"bs{config.batch_size}"
        result = {"batch_size": config.batch_size, "lr": config.lr, "run_dir": str(out),
                  **launch(child_command(config, out), out, timeout_s)}
        results.append(result)
        if on_result:
            on_result(result)
    return results


def main(argv: list[str]) -> int:
    config = TrainConfig.from_dict(json.loads(argv[0]))
    out = Path(argv[1])
    result = train_measured(config, out)  # the run claims its folder, made by the parent (run_child)
    files.write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
