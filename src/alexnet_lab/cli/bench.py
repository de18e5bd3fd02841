"""`alexnet-lab bench`: training-step throughput of the book's pipeline vs this project's, in one
process, with achieved FLOP/s against the device's measured matmul peak.
"""

from __future__ import annotations

import argparse
import json

from alexnet_lab.analysis.bench import PIPELINES, BenchConfig, format_report, run_bench
from alexnet_lab.cli.options import add_data, add_device, add_model, positive_int
from alexnet_lab.engine.config import PRECISIONS
from alexnet_lab.engine.builders import load_splits

NAME = "bench"
HELP = "time the training step of the book's pipeline and of this project's (examples/s, FLOP/s)"


def add_arguments(parser) -> None:
    defaults = BenchConfig()
    add_model(parser)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--resize", type=positive_int, default=None,
                        help="input side in pixels (default: the model's)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps first")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps, help="steps per timed window")
    parser.add_argument("--repeats", type=positive_int, default=defaults.repeats,
                        help="timed windows per pipeline (the median is reported)")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="reference DataLoader worker processes (d2l uses 4)")
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    n = parser.add_argument_group("project pipeline numerics (the reference is the book's fp32 NCHW)")
    n.add_argument("--precision", choices=PRECISIONS, default=defaults.precision)
    n.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=defaults.channels_last)
    n.add_argument("--compile", action=argparse.BooleanOptionalAction, default=defaults.compile)
    add_device(n)
    parser.add_argument("--peak-size", type=positive_int, default=defaults.peak_size,
                        help="side of the matmuls that measure the peak FLOP/s")
    add_data(parser)
    parser.add_argument("--limit-train", type=positive_int, default=None,
                        help="use the first N training examples")
    parser.add_argument("--json", action="store_true", help="also print one JSON object as the last line")


def run(args) -> int:
    cfg = BenchConfig(model=args.model, batch_size=args.batch_size, resize=args.resize, warmup=args.warmup,
                      steps=args.steps, repeats=args.repeats, workers=args.workers,
                      precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                      device=args.device or "auto", peak_size=args.peak_size)
    splits = load_splits(args.data_dir, args.limit_train, 1)
    result = run_bench(cfg, splits, pipelines=args.pipelines)
    print(format_report(result), flush=True)
    if args.json:
        print(json.dumps(result))
    return 0
