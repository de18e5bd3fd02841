"""`alexnet-lab train`: train a model with a preset recipe and write a run folder."""

from __future__ import annotations

import time
from pathlib import Path

from alexnet_lab.cli.options import add_training, training_overrides
from alexnet_lab.cli.progress import ConsoleReporter, chapter_lines
from alexnet_lab.engine.config import TrainConfig, make_config
from alexnet_lab.engine.trainer import fit
from alexnet_lab.reports.run_dir import RunWriter, default_run_dir, prepare_run_dir

NAME = "train"
HELP = "train a model (default: the chapter's AlexNet with the book's d2l recipe)"


def add_arguments(parser) -> None:
    add_training(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<timestamp>-<model>)")


def config_from_args(args) -> TrainConfig:
    return make_config(args.preset, **training_overrides(args))


def train_and_report(config: TrainConfig, out: Path) -> dict:
    """Train `config` into run folder `out`, showing progress; return the summary."""
    writer = RunWriter(out, config.to_dict())
    reporter = ConsoleReporter(config, out)
    # The full recipe, as saved in config.json: a preset is just a named config.
    print(f"Config ({config.preset}): " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()
                                                    if k not in ("preset", "data_dir")), flush=True)
    started = time.perf_counter()
    try:
        summary = fit(config, [writer, reporter])
    finally:
        reporter.close()
    print(chapter_lines(summary))
    print(f"wall-clock {time.perf_counter() - started:.1f} s"
          + (f"; reached test acc {config.target_accuracy} in {summary['time_to_target_s']:.1f} s"
             if summary.get("time_to_target_s") is not None else ""))
    print(f"Results in {out}/: summary.json, metrics.jsonl, curves.svg, curves.png, checkpoint.pt")
    return summary


def run(args) -> int:
    config = config_from_args(args)
    out = prepare_run_dir(args.out or default_run_dir(config.model))
    train_and_report(config, out)
    return 0
