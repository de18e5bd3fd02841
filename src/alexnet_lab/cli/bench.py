"""`alexnet-lab bench`: training-step throughput of the book's pipeline vs this project's (in plain fp32
and in the numerics a run chooses), in one process, with achieved FLOP/s against the device's matmul peak.
"""

from __future__ import annotations

import json

from alexnet_lab.analysis.bench import MAX_PEAK_SIZE, PIPELINES, BenchConfig, format_report, run_bench
from alexnet_lab.cli.options import (MAX_INT, add_config_flag, add_config_flags, add_preset, positive_int,
                                     training_overrides, whole_number)
from alexnet_lab.data.sources import FASHION_MNIST
from alexnet_lab.engine.builders import splits_for
from alexnet_lab.engine.config import TrainConfig, make_config
from alexnet_lab.errors import UserError

NAME = "bench"
# The TrainConfig settings bench takes (declared `bench=True`: what a step costs, the data it times); the
# project pipeline's recipe is the preset's otherwise.
CONFIG_FLAGS = [f.name for f in TrainConfig.flag_fields() if f.metadata["bench"]]

MAX_WORKERS = 256  # processes, each with a copy of the loader: more only exhausts the machine


def add_arguments(parser) -> None:
    defaults = BenchConfig()
    add_preset(parser, default="fast", what="this project's fast step; the reference is the book's fp32 NCHW")
    add_config_flags(parser, CONFIG_FLAGS)
    if "data" not in CONFIG_FLAGS:  # declared so that `--data X` is refused clearly, not read as --data-dir
        add_config_flag(parser, "data", help=f"the data timed: only {FASHION_MNIST}, the book's pipeline's data")
    t = parser.add_argument_group("timing")
    t.add_argument("--warmup", type=whole_number(0, MAX_INT), default=defaults.warmup, help="untimed steps first")
    t.add_argument("--steps", type=positive_int, default=defaults.steps, help="steps per timed window")
    t.add_argument("--repeats", type=positive_int, default=defaults.repeats,
                   help="timed windows per pipeline (the median is reported)")
    t.add_argument("--workers", type=whole_number(0, MAX_WORKERS), default=defaults.workers,
                   help=f"reference DataLoader worker processes (d2l uses 4; at most {MAX_WORKERS})")
    t.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES),
                   help="reference: the book's (d2l DataLoader, fp32 NCHW); plain: this project's step in fp32 "
                        "NCHW; project: its step in the preset's numerics (auto: measured fastest)")
    t.add_argument("--peak-size", type=positive_int, default=defaults.peak_size,
                   help="side of the matmuls that measure the peak FLOP/s (at least 8192 on a CUDA GPU; "
                        f"at most {MAX_PEAK_SIZE})")
    parser.add_argument("--json", action="store_true", help="also print one JSON object as the last line")


def run(args) -> int:
    config = make_config(args.preset or "fast", **training_overrides(args))
    if config.data != FASHION_MNIST:
        raise UserError(f"bench times the book's Fashion-MNIST pipeline (d2l's DataLoader) against this project's "
                        f"on the same Fashion-MNIST batches, so it takes no other data (--data {config.data}). "
                        "For this project's throughput on your images, train on them: 'alexnet-lab train --data "
                        f"{config.data} ...' prints examples/s.")
    bench = BenchConfig(warmup=args.warmup, steps=args.steps, repeats=args.repeats, workers=args.workers,
                        peak_size=args.peak_size)
    splits = splits_for(config.replace(limit_test=1))  # training batches only: one test image suffices
    result = run_bench(config, bench, splits, pipelines=args.pipelines)
    print(format_report(result), flush=True)
    if args.json:
        print(json.dumps(result))
    return 0
