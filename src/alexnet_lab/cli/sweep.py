"""`alexnet-lab sweep` (exercise 3): one run per batch size; test accuracy, examples/s and peak memory.

Each run is its own process (so its peak memory is its own) and its own run folder; out-of-memory
runs are recorded in the table, not raised.
"""

from __future__ import annotations

import json

from alexnet_lab.analysis.sweep import sweep, sweep_configs
from alexnet_lab.cli.options import add_training, config_from_args, positive_number
from alexnet_lab import files
from alexnet_lab.engine.config import field_range
from alexnet_lab.errors import UserError, describe
from alexnet_lab.engine.run_dir import default_run_dir, prepare_run_dir
from alexnet_lab.reports.plots import plot_sweep

NAME = "sweep"


MAX_SIZES = 32  # runs in one sweep: each is a training run in a process and a folder of its own
MAX_TIMEOUT_MINUTES = 1e5  # 69 days, a run's timeout: subprocess cannot wait for an infinite one


def batch_sizes(text: str) -> list[int]:
    """--batch-sizes' text -> the sizes, each once and each a batch size TrainConfig takes."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--batch-sizes must be whole numbers separated by commas, got {describe(text)}.") from None
    low, high = field_range("batch_size")[:2]
    if not values or not all(low <= v <= high for v in values):
        raise UserError(f"--batch-sizes needs at least one size, each in [{low}, {high:,}]; got {describe(text)}.")
    if len(set(values)) < len(values):
        raise UserError(f"--batch-sizes names a size twice ({describe(text)}): each size runs once, into its own "
                        "folder bs<N>.")
    if len(values) > MAX_SIZES:
        raise UserError(f"--batch-sizes names {len(values):,} sizes; a sweep runs at most {MAX_SIZES}: split it.")
    return values


def add_arguments(parser) -> None:
    parser.add_argument("--batch-sizes", default="32,64,128,256,512", help="comma-separated batch sizes")
    parser.add_argument("--lr-scaling", choices=("none", "linear"), default="none",
                        help="keep the lr for every batch size, or scale it by batch/128")
    parser.add_argument("--timeout-minutes", type=positive_number(MAX_TIMEOUT_MINUTES), default=None,
                        help="stop a run that takes longer than this (recorded as timeout)")
    add_training(parser)
    parser.add_argument("--out", default=None, help="sweep folder (default: runs/<timestamp>-sweep)")


def format_table(results: list[dict]) -> str:
    lines = [f"{'batch':>6} {'lr':>8} {'status':<14} {'test acc':>8} {'examples/s':>10} {'peak memory':>12} {'steps':>6}",
             "-" * 70]
    for r in results:
        ok = r["status"] == "ok"
        memory = f"{r['peak_memory_bytes'] / 2**20:,.0f} MiB" if r.get("peak_memory_bytes") else "-"
        lines.append(f"{r['batch_size']:>6} {r['lr']:>8.4g} {r['status']:<14} "
                     f"{r['test_acc'] if ok else float('nan'):>8.4f} "
                     f"{r['examples_per_sec'] if ok else float('nan'):>10.1f} {memory:>12} "
                     f"{r['steps'] if ok else '-':>6}")
    return "\n".join(lines)


def run(args) -> int:
    sizes = batch_sizes(args.batch_sizes)
    if args.batch_size is not None:
        raise UserError("sweep takes --batch-sizes (comma-separated), not --batch-size.")
    base = config_from_args(args)
    configs = sweep_configs(base, sizes, args.lr_scaling)
    out = prepare_run_dir(args.out or default_run_dir("sweep"))
    print(f"Sweeping batch sizes {sizes} for {base.model} (preset '{base.preset}', {base.epochs:g} epoch(s)"
          + (f" of the first {base.limit_train:,} images" if base.limit_train else "")
          + f", lr {'scaled by batch/128' if args.lr_scaling == 'linear' else base.lr}), one process each, into {out}/")
    timeout = args.timeout_minutes * 60 if args.timeout_minutes else None

    def report(r):
        extra = f" ({r['detail']})" if r.get("detail") else ""
        print(f"  batch {r['batch_size']}: {r['status']}{extra}", flush=True)

    results = sweep(configs, out, timeout_s=timeout, on_result=report)
    print(format_table(results))
    memory_kind = next((r["memory_kind"] for r in results if r.get("memory_kind")), "peak memory")
    print(f"Peak memory: {memory_kind}.")
    files.write_text(out / "sweep.json", json.dumps({"config": base.to_dict(), "lr_scaling": args.lr_scaling,
                                                "results": results}, indent=2) + "\n")
    plot_sweep(results, [out / "sweep.png", out / "sweep.svg"], f"{base.model}: batch-size sweep")
    print(f"Table: {out / 'sweep.json'}; plots: {out / 'sweep.png'}, {out / 'sweep.svg'}; "
          f"each run's folder: {out}/bs<N>/ (readable by 'alexnet-lab compare')")
    return 0
