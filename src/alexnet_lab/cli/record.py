"""`alexnet-lab record`: a preset's time to its target accuracy over several seeds (airbench style):
per seed time and accuracy, then mean/min/max, the fraction of seeds that reached it, the machine.
"""

from __future__ import annotations

import json
import sys

from alexnet_lab.analysis.machine import format_machine
from alexnet_lab.analysis.record import json_line, run_record
from alexnet_lab.cli.options import add_training, config_from_args, positive_int
from alexnet_lab.engine.config import RECORD_TARGETS

NAME = "record"


def add_arguments(parser) -> None:
    add_training(parser, "speedrun", "the fastest rung")
    parser.description = (f"{parser.description}. The ladder: " + ", ".join(f"{p} ({t})" for p, t in RECORD_TARGETS.items())
                          + ". Other presets need --target-accuracy (then the run evaluates 5 times per "
                            "epoch and stops at the target). Flags override the preset, as in `train`.")
    parser.add_argument("--seeds", type=positive_int, default=5,
                        help="runs with seeds --seed, --seed+1, ... after one untimed warm-up")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def format_row(row: dict) -> str:
    reached = f"{row['time_to_target_s']:8.2f} s" if row["reached"] else "  not reached"
    return f"seed {row['seed']:>3}  test acc {row['test_acc']:.4f}  time to target {reached}  " \
           f"(run {row['wall_seconds']:.2f} s)"


def format_summary(result: dict) -> str:
    return "\n".join([
        f"{result['preset']}: target {result['target']} on {result['test_examples']:,} test images, "
        f"{result['seeds']} seeds ({result['train_examples']:,} training images)",
        f"  test acc   mean {result['mean_acc']:.4f}  min {result['min_acc']:.4f}  max {result['max_acc']:.4f}"
        f"  (std {result['std_acc']:.4f})",
        f"  time (s)   mean {result['mean_time_s']:.2f}  min {result['min_time_s']:.2f}  "
        f"max {result['max_time_s']:.2f}   (seeds that missed the target count their whole run)",
        f"  reached    {result['reached']:.0%} of seeds; mean accuracy "
        f"{'meets' if result['mean_acc'] >= result['target'] else 'MISSES'} the target",
        f"  data       {result['data_source']}",
        f"  warm-up    {result['warmup_s']:.2f} s untimed" + (" (includes torch.compile)" if result["compile"] else ""),
        f"  machine    {format_machine(result['machine'])}"])


def run(args) -> int:
    config = config_from_args(args, default_preset="speedrun")
    print(f"record: {config.preset} ({config.model}, {config.epochs:g} epochs, batch {config.batch_size}), "
          f"{args.seeds} seeds after one warm-up", flush=True)
    result = run_record(config, args.seeds, on_seed=lambda row: print(format_row(row), flush=True))
    print(format_summary(result), flush=True)
    if args.json:
        print(json.dumps(json_line(result)))
    sys.stdout.flush()
    return 0
