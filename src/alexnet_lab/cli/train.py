"""`alexnet-lab train`: train a model with a preset recipe and write a run folder."""

from __future__ import annotations

import time
from pathlib import Path

from alexnet_lab.cli.options import add_training, training_overrides
from alexnet_lab.cli.progress import ConsoleReporter, chapter_lines
from alexnet_lab.engine import distributed
from alexnet_lab.engine.config import TrainConfig, make_config
from alexnet_lab.engine.setup import load_splits
from alexnet_lab.engine.trainer import fit
from alexnet_lab.errors import UserError
from alexnet_lab.reports.run_dir import RunWriter, default_run_dir, prepare_run_dir

NAME = "train"
HELP = "train a model (default: the chapter's AlexNet with the book's d2l recipe)"


def add_arguments(parser) -> None:
    add_training(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<timestamp>-<model>)")


def config_from_args(args) -> TrainConfig:
    return make_config(args.preset, **training_overrides(args))


def train_and_report(config: TrainConfig, out: Path | None,
                     env: distributed.DistEnv = distributed.DistEnv()) -> dict:
    """Train `config` into run folder `out`, showing progress; return the summary.

    Under torchrun only rank 0 writes files and prints (the others pass out=None); every rank
    trains its shard and the metrics are all-reduced, so rank 0 reports the whole dataset.
    """
    fit_kwargs = {}
    if env.distributed:
        splits = distributed.in_turn(  # one download per machine, if one is needed
            env, lambda: load_splits(config.data_dir, config.limit_train, config.limit_test))
        fit_kwargs = {"splits": splits, **env.fit_kwargs()}
        if not env.is_main:
            return fit(config, [], **fit_kwargs)
    writer = RunWriter(out, config.to_dict())
    reporter = ConsoleReporter(config, out)
    started = time.perf_counter()
    try:
        summary = fit(config, [writer, reporter], **fit_kwargs)
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
    try:
        with distributed.session(config.device) as env:
            if env.distributed:
                config = config.replace(device=env.device)  # this rank's GPU (cuda:LOCAL_RANK) or the CPU
            out = distributed.shared_outcome(  # a bad --out stops every rank, reported once
                env, lambda: prepare_run_dir(args.out or default_run_dir(config.model)), run_here=env.is_main)
            train_and_report(config, out, env)
    except UserError:
        if distributed.launched_rank() != 0:  # the ranks share config and data: rank 0 reports it
            raise SystemExit(2) from None
        raise
    return 0
