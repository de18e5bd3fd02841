"""`alexnet-lab bench`: training-step throughput of the book's pipeline vs this project's, in one
process, with achieved FLOP/s against the device's measured matmul peak.
"""

from __future__ import annotations

import json

from alexnet_lab.analysis.bench import PIPELINES, BenchConfig, format_report, run_bench
from alexnet_lab.cli.options import add_config_flags, add_preset, positive_int, training_overrides
from alexnet_lab.engine.builders import load_splits
from alexnet_lab.engine.config import make_config

NAME = "bench"
HELP = "time the training step of the book's pipeline and of this project's (examples/s, FLOP/s)"
# The TrainConfig settings bench takes; the project pipeline's recipe is the preset's otherwise.
CONFIG_FLAGS = ["model", "batch_size", "resize", "seed", "precision", "channels_last", "compile", "device",
                "data_dir", "limit_train"]


def add_arguments(parser) -> None:
    defaults = BenchConfig()
    add_preset(parser, default="fast", what="this project's fast step; the reference is the book's fp32 NCHW")
    add_config_flags(parser, CONFIG_FLAGS)
    t = parser.add_argument_group("timing")
    t.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps first")
    t.add_argument("--steps", type=positive_int, default=defaults.steps, help="steps per timed window")
    t.add_argument("--repeats", type=positive_int, default=defaults.repeats,
                   help="timed windows per pipeline (the median is reported)")
    t.add_argument("--workers", type=int, default=defaults.workers,
                   help="reference DataLoader worker processes (d2l uses 4)")
    t.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    t.add_argument("--peak-size", type=positive_int, default=defaults.peak_size,
                   help="side of the matmuls that measure the peak FLOP/s")
    parser.add_argument("--json", action="store_true", help="also print one JSON object as the last line")


def run(args) -> int:
    config = make_config(args.preset or "fast", **training_overrides(args))
    bench = BenchConfig(warmup=args.warmup, steps=args.steps, repeats=args.repeats, workers=args.workers,
                        peak_size=args.peak_size)
    splits = load_splits(config.data_dir, config.limit_train, 1)
    result = run_bench(config, bench, splits, pipelines=args.pipelines)
    print(format_report(result), flush=True)
    if args.json:
        print(json.dumps(result))
    return 0
