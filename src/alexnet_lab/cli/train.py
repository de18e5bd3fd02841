"""`alexnet-lab train`: train a model with a preset recipe and write a run folder.

`--resume RUN_DIR` continues an interrupted run; Ctrl-C/SIGTERM stop it with a checkpoint. The run's
life (data, folder, resume rules, fit, the final test) is engine/run.py's `train`; this module parses.
"""

from __future__ import annotations

import dataclasses
import shlex

from alexnet_lab.cli.options import add_training, config_from_args, training_overrides
from alexnet_lab.cli.running import add_output, run_training, tensorboard_on
from alexnet_lab.engine import distributed, run as lifecycle
from alexnet_lab.engine.config import TrainConfig, check_setting
from alexnet_lab.errors import UserError

NAME = "train"
KEEPS_STARTUP_SIGNALS = True  # Ctrl-C is recorded until training starts (cli/signals.py), then a checkpoint


def add_arguments(parser) -> None:
    add_training(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<timestamp>-<model>)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its checkpoint.pt with the config saved "
                             f"there; only {lifecycle.resumable_flags()} may be given with it (--epochs only "
                             "to extend the run)")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="with --resume: continue even though the data differ from those the run "
                             "started with (their fingerprint is saved in the checkpoint)")
    add_output(parser)


def given_on_resume(args) -> dict:
    """The settings the command line gives beside --resume (only those set)."""
    if args.config is not None:
        raise UserError("--config cannot be combined with --resume: a resumed run keeps the config saved in its "
                        "checkpoint. To start a new run from that config: alexnet-lab train --config "
                        f"{shlex.quote(str(args.resume) + '/config.json')} --out NEW_DIR.")
    given = {key: value for key, value in training_overrides(args).items() if value is not None}
    if args.preset is not None:
        given["preset"] = args.preset
    return given


def ddp_timeout(args) -> float:
    """--ddp-timeout, or its default: needed before the config is (the job is joined first)."""
    value = getattr(args, "ddp_timeout", None)
    if value is None:
        return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "ddp_timeout")
    check_setting("ddp_timeout", value)
    return value


def run(args) -> int:
    try:
        with distributed.session(args.device or "auto", ddp_timeout(args)) as env:
            output = {"env": env, "progress": args.progress, "report": args.report,
                      "tensorboard": tensorboard_on(args.tensorboard)}  # asked for without the package: refused now
            if args.resume is not None:
                resume = lifecycle.Resume(args.resume, given_on_resume(args), args.allow_data_change)
                run_training(None, args.out, resume=resume, **output)
            else:
                run_training(config_from_args(args), args.out, **output)
        return 0
    except UserError as exc:
        # The ranks share config and data: rank 0 reports their errors. A timeout is each rank's own
        # (rank 0 may be the one that stopped answering), so every rank reports it.
        if distributed.launched_rank() != 0 and not isinstance(exc, distributed.PeerFailure):
            raise SystemExit(2) from None
        raise
