"""`bench`: training-step throughput of the book's pipeline against this project's, in one process,
with achieved FLOP/s set against a measured matmul peak of the same device.

Pipelines: reference = the book's (d2l's DataLoader and train_ch6's step, fp32 NCHW); plain = this
project's step in plain fp32 NCHW; project = this project's step in the numerics a run would train in
(for --precision auto and an unset channels-last: the fastest measured, engine/numerics.py). The plain
step is one of the candidates measured, so the chosen numerics are never slower than it in that
measurement; bench times both again side by side and says so where they are.

Definitions (used in every number `bench` prints):
- examples/s: batch_size * steps / wall-clock seconds of a window of consecutive training steps,
  each step = next batch from the pipeline + forward + backward + optimizer update; the window ends
  with a device sync. Windows follow warm-up steps; the median over windows is reported.
- FLOP per example: what torch.utils.flop_counter.FlopCounterMode counts for one forward + backward
  at batch 1 in fp32 (a multiply-add = 2 FLOP; convolutions and matmuls only).
- achieved FLOP/s = FLOP per example * examples/s; peak FLOP/s = best of a few windows of n x n
  matmuls (n = --peak-size, at least 8192 on a CUDA GPU) in the precision the pipeline ran in.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet_lab.analysis.machine import describe_machine, format_machine
from alexnet_lab.analysis.reference_pipeline import D2L_NUM_WORKERS, reference_loader, reference_step
from alexnet_lab.data import BatchLoader
from alexnet_lab.engine.config import PRESETS, TrainConfig
from alexnet_lab.engine.device import DTYPES, backend_flags, resolve_device, synchronize
from alexnet_lab.engine.builders import Splits, input_size, model_options
from alexnet_lab.engine.model_setup import init_weights
from alexnet_lab.engine.numerics import PLAIN, numerics_line
from alexnet_lab.engine.step import TrainingStep, build_training_step
from alexnet_lab.errors import UserError
from alexnet_lab.models import build_model, check_input_size

PIPELINES = ("reference", "plain", "project")
D2L_LR = PRESETS["d2l"]["lr"]  # the reference step's; its cost does not depend on it


# The peak needs a matmul large enough to saturate the device (GPU_PEAK_SIZE on a GPU), not more:
# memory grows as n^2 (3 x 4 n^2 bytes in fp32) and time as n^3 (a CPU takes minutes at 16384).
MAX_PEAK_SIZE = 16384


@dataclass(frozen=True)
class BenchConfig:
    """How to time; what to time is a TrainConfig (the project pipeline's recipe and numerics; the
    reference pipeline takes its model, batch size, input size, seed and device)."""
    warmup: int = 3               # untimed steps before the first window
    steps: int = 5                # steps per timed window
    repeats: int = 3              # timed windows per pipeline
    workers: int = D2L_NUM_WORKERS  # reference DataLoader worker processes
    peak_size: int = 2048         # side of the square matmuls that measure peak FLOP/s

    def __post_init__(self):
        for name in ("steps", "repeats", "peak_size"):
            if getattr(self, name) < 1:
                raise UserError(f"bench: --{name.replace('_', '-')} must be at least 1.")
        if self.peak_size > MAX_PEAK_SIZE:
            raise UserError(f"bench: --peak-size must be at most {MAX_PEAK_SIZE}, got {self.peak_size}: the "
                            "peak is measured on three n x n matrices (3 GiB in fp32 at the limit), and one "
                            "matmul costs 2 n^3 FLOP (8.8e12 at the limit).")
        if self.warmup < 0 or self.workers < 0:
            raise UserError("bench: --warmup and --workers must be >= 0.")


def flops_per_example(model_name: str, size: int, **model_kwargs) -> int:
    """FLOP of one training example: forward + backward at batch 1, fp32, counted (not timed), of the
    model built with `model_kwargs` (default: 1 input channel, Fashion-MNIST's)."""
    model = build_model(model_name, **{"in_channels": 1, **model_kwargs})
    images = torch.zeros(1, model_kwargs.get("in_channels", 1), size, size)
    with FlopCounterMode(display=False) as counter:
        loss = model(images).sum()
        loss.backward()
    return int(counter.get_total_flops())


GPU_PEAK_SIZE = 8192      # a 2048^3 matmul is over in ~20 us on a big GPU: launch costs would dominate
PEAK_WINDOW_S = 0.05      # each timed window holds enough matmuls to last about this long


def matmul_peak(device: torch.device, precision: str, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of n x n @ n x n matmuls in `precision` on `device` (2 n^3 FLOP each).

    On a GPU n is at least GPU_PEAK_SIZE. Each of `reps` windows runs back-to-back matmuls for about
    PEAK_WINDOW_S and ends with a device sync; the best window counts. fp32 on CUDA is what
    torch.backends.cuda.matmul.allow_tf32 says (off by default: true fp32).
    """
    if device.type == "cuda":
        n = max(n, GPU_PEAK_SIZE)
    dtype = DTYPES[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up: library initialisation, kernel selection
    synchronize(device)
    start = time.perf_counter()
    torch.matmul(a, b)
    synchronize(device)
    per_window = max(1, min(1000, int(PEAK_WINDOW_S / max(time.perf_counter() - start, 1e-7))))
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(per_window):
            torch.matmul(a, b)
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / per_window)
    return 2 * n ** 3 / best


def _time_windows(step, batches, device: torch.device, warmup: int, steps: int, repeats: int) -> list[float]:
    """Seconds of `repeats` consecutive windows of `steps` steps each, after `warmup` steps."""
    for _ in range(warmup):
        step(*next(batches))
    synchronize(device)
    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        synchronize(device)  # a host-device sync point: the window's end
        windows.append(time.perf_counter() - start)
    return windows


def _endless_reference(loader):
    while True:  # new epoch: the DataLoader re-shuffles and restarts its workers, as in d2l
        yield from loader


def _endless_project(loader: BatchLoader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader.iterate(0)
        epoch += 1


def bench_reference(config: TrainConfig, bench: BenchConfig, splits: Splits, device: torch.device,
                    size: int) -> list[float]:
    """The book's pipeline: PIL per-image resize in worker processes, fp32 NCHW, a sync per step."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels=1)
    init_weights(model)  # d2l's xavier init
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=D2L_LR)  # d2l: plain SGD, default options
    loss_fn = nn.CrossEntropyLoss()
    loader = reference_loader(splits.train_images.numpy(), splits.train_labels.numpy(), config.batch_size,
                              size, device, num_workers=bench.workers, seed=config.seed)
    batches = _endless_reference(loader)
    try:
        return _time_windows(lambda x, y: reference_step(model, loss_fn, optimizer, x, y, device),
                             batches, device, bench.warmup, bench.steps, bench.repeats)
    finally:
        batches.close()  # drops the DataLoader iterator: its worker processes exit


def bench_project(config: TrainConfig, bench: BenchConfig, splits: Splits, device: torch.device,
                  size: int) -> tuple[list[float], TrainingStep]:
    """This project's pipeline: `config`'s training step (as `fit` builds it: its numerics chosen as a
    run's are), same model and batch; the windows' seconds and the step."""
    step = build_training_step(config, total_steps=bench.warmup + bench.steps * bench.repeats, device=device,
                               model_kwargs=model_options(splits))
    loader = BatchLoader(splits.train_images, splits.train_labels, config.batch_size, shuffle=True,
                         resize=size, device=device, seed=config.seed)
    # no sync inside a window: the step's results stay on the device
    windows = _time_windows(step, _endless_project(loader), device, bench.warmup, bench.steps, bench.repeats)
    return windows, step


def _pipeline_result(windows: list[float], batch_size: int, steps: int, flops: int) -> dict:
    rates = [batch_size * steps / s for s in windows]
    median = statistics.median(rates)
    return {"examples_per_sec": median, "examples_per_sec_windows": rates,
            "step_ms": 1000 * batch_size / median, "flops_per_sec": flops * median}


def _project_rows(config: TrainConfig, bench: BenchConfig, splits: Splits, device: torch.device, size: int,
                  pipelines, timing: tuple) -> dict:
    """The step in the numerics a run would choose and the plain fp32 NCHW step, each timed (once where
    they are the same step)."""
    rows = {}
    if "project" in pipelines:
        windows, step = bench_project(config, bench, splits, device, size)
        rows["project"] = {"precision": step.precision, "memory_format": "NHWC" if step.channels_last else "NCHW",
                           "compile": config.compile, "numerics": step.numerics.as_dict(),
                           **_pipeline_result(windows, *timing)}
    if "plain" in pipelines:
        project = rows.get("project", {})
        numerics = (project.get("precision"), project.get("memory_format"), project.get("compile"))
        if numerics == (PLAIN[0], "NCHW", False):
            rows["plain"] = {k: v for k, v in project.items() if k != "numerics"}  # the same step: timed once
        else:
            plain = config.replace(precision=PLAIN[0], channels_last=PLAIN[1], compile=False)
            windows, _ = bench_project(plain, bench, splits, device, size)
            rows["plain"] = {"precision": PLAIN[0], "memory_format": "NCHW", "compile": False,
                             **_pipeline_result(windows, *timing)}
    return rows


def run_bench(config: TrainConfig, bench: BenchConfig, splits: Splits, pipelines=PIPELINES) -> dict:
    """Time the pipelines in this process (one after the other) and return all numbers as a dict."""
    unknown = set(pipelines) - set(PIPELINES)
    if unknown:
        raise UserError(f"bench: unknown pipeline(s) {', '.join(sorted(unknown))}; choose from {', '.join(PIPELINES)}.")
    device = resolve_device(config.device)
    size = input_size(config)
    check_input_size(config.model, size)
    if len(splits.train_images) < config.batch_size:
        raise UserError(f"bench: --batch-size {config.batch_size} is larger than the {len(splits.train_images)} "
                        "training examples available.")
    flops = flops_per_example(config.model, size)
    result = {"config": {**config.to_dict(), **asdict(bench)}, "device": _device_name(device),
              "machine": describe_machine(device), "input_size": size, "flops_per_example": flops}
    timing = (config.batch_size, bench.steps, flops)
    with backend_flags(device, deterministic=False):
        if "reference" in pipelines:
            result["reference"] = {"precision": "fp32", "memory_format": "NCHW", "workers": bench.workers,
                                   "cpus": usable_cpus(),
                                   **_pipeline_result(bench_reference(config, bench, splits, device, size), *timing)}
        result.update(_project_rows(config, bench, splits, device, size, pipelines, timing))
    # the matmul peak of each precision a pipeline ran in
    precisions = ["fp32", *sorted({result[n]["precision"] for n in PIPELINES if n in result} - {"fp32"})]
    peaks = {precision: matmul_peak(device, precision, bench.peak_size) for precision in precisions}
    result["peak_flops_per_sec"] = peaks
    for name in PIPELINES:
        if name in result:
            # Model FLOP utilisation: achieved FLOP/s over the matmul peak of the precision it ran in.
            result[name]["mfu"] = result[name]["flops_per_sec"] / peaks[result[name]["precision"]]
    for key, baseline in (("ratio", "reference"), ("ratio_plain", "plain")):
        if baseline in result and "project" in result:
            result[key] = result["project"]["examples_per_sec"] / result[baseline]["examples_per_sec"]
    return result


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), as torch counts them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads, torch {torch.__version__})"
    return device.type


def format_report(result: dict) -> str:
    """The human-readable table `bench` prints."""
    cfg = result["config"]
    size = result["input_size"]
    lines = [f"bench: {cfg['model']} at {size}x{size}, batch {cfg['batch_size']}, on {result['device']}; "
             f"{cfg['warmup']} warm-up steps, then {cfg['repeats']} windows of {cfg['steps']} steps each.",
             f"machine: {format_machine(result['machine'])}",
             f"FLOP per training example (fwd+bwd, FlopCounterMode): {result['flops_per_example'] / 1e9:.3f} GFLOP",
             f"{'pipeline':<10} {'numerics':<24} {'examples/s (median)':>20} {'ms/step':>9} "
             f"{'GFLOP/s':>9} {'of peak':>8}"]
    for name in PIPELINES:
        if name not in result:
            continue
        r = result[name]
        numerics = f"{r['precision']} {r['memory_format']}" + (" compiled" if r.get("compile") else "")
        if name == "reference":
            numerics += f", {r['workers']} workers"
        lines.append(f"{name:<10} {numerics:<24} {r['examples_per_sec']:>20.1f} "
                     f"{r['step_ms']:>9.0f} {r['flops_per_sec'] / 1e9:>9.1f} {100 * r['mfu']:>7.1f}%")
    peaks = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in result["peak_flops_per_sec"].items())
    side = max(cfg["peak_size"], GPU_PEAK_SIZE) if result["device"].startswith("cuda") else cfg["peak_size"]
    lines.append(f"matmul peak ({side}^3): {peaks}")
    lines += _ratio_lines(result)
    ref = result.get("reference", {})
    if ref.get("workers", 0) > ref.get("cpus", 1 << 30):
        book = " (the book's choice: d2l.get_dataloader_workers())" if ref["workers"] == D2L_NUM_WORKERS else ""
        lines.append(f"note: the reference pipeline runs {ref['workers']} DataLoader worker processes{book} "
                     f"on this machine's {ref['cpus']} CPUs, on purpose (torch's warning about it is silenced)")
    return "\n".join(lines)


def _ratio_lines(result: dict) -> list[str]:
    """How the project's step compares with the book's pipeline and with its own plain fp32 step, and
    how its numerics were chosen."""
    numerics = result.get("project", {}).get("numerics") or {}
    measured = numerics.get("how") in ("measured", "cached")
    lines = [numerics_line(numerics)] if measured else []
    if "ratio" in result:
        lines.append(f"project / reference: {result['ratio']:.2f}x examples/s (this project's step against the "
                     "book's pipeline)")
    if "ratio_plain" not in result:
        return lines
    why = ("chosen as the fastest measured, plain fp32 among them, they are never slower than it in that "
           "measurement" if measured else "as set by --precision and --channels-last")
    lines.append(f"project / plain: {result['ratio_plain']:.2f}x examples/s (the numerics a run trains in against "
                 f"plain fp32 NCHW; {why})")
    if result["ratio_plain"] < 1:
        lines.append("note: in these windows the project's numerics ran slower than plain fp32: "
                     + ("the measurement that chose them does not hold here (other work on the machine, or a "
                        "choice cached under other conditions); delete the cache file named above to measure "
                        "again" if measured else "--precision auto without a channels-last flag chooses the "
                        "fastest"))
    return lines
