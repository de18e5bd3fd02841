"""`alexnet-lab train`: train a model with a preset recipe and write a run folder.

`--resume RUN_DIR` continues an interrupted run; Ctrl-C/SIGTERM stop it with a checkpoint. The run's
life (data, folder, resume rules, fit) is engine/run.py; this module parses, calls and prints.
"""

from __future__ import annotations

import dataclasses
import shlex
from contextlib import ExitStack

from alexnet_lab.cli import signals
from alexnet_lab.cli.options import add_training, config_from_args, training_overrides
from alexnet_lab.cli.running import add_output, print_notes, tensorboard_on, train_and_report
from alexnet_lab.engine import distributed, run as lifecycle
from alexnet_lab.engine.config import TrainConfig, check_setting
from alexnet_lab.engine.run_dir import claim_run_dir, default_run_dir
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


def resume_run(args, env: distributed.DistEnv) -> int:
    given = given_on_resume(args)
    tensorboard = tensorboard_on(args.tensorboard)
    path = lifecycle.resume_checkpoint(args.resume, args.out)
    out = path.parent
    if not env.distributed:
        signals.check()  # the last safe point before the run folder is touched
    with ExitStack() as held:  # the folder is this process's from before its checkpoint is read until the end
        distributed.shared_outcome(env, lambda: held.enter_context(
            claim_run_dir(out, resume=True, flag="--resume")), run_here=env.is_main)
        payload, saved = lifecycle.read_resume(path)
        config = lifecycle.resume_config(saved, given)
        if env.distributed:  # this rank's device, and the timeout the job was joined with
            config = config.replace(device=env.device, ddp_timeout=env.timeout_s)
        lifecycle.check_not_finished(out, payload, config, saved)
        splits = lifecycle.load_data(config, env)
        print_notes(splits, env)
        if not lifecycle.check_resume_data(payload, splits, out, allow=args.allow_data_change) and env.is_main:
            print("Note: --allow-data-change: the data differ from those the run started with; continuing on them.")
        if env.is_main:
            describe_resume(out, payload, config, saved)
        train_and_report(config, out if env.is_main else None, splits=splits, resume=payload, env=env,
                         progress=args.progress, report=args.report, tensorboard=tensorboard)
    if env.is_main:
        signals.check(f"after the run had finished (its results are in {out}/)")
    return 0


def describe_resume(out, payload: dict, config: TrainConfig, saved: TrainConfig) -> None:
    step = payload["run_state"].get("step", 0)
    print(f"Resuming {out} at step {step} (epoch {payload['run_state'].get('epoch', 0) + 1}, "
          f"{config.epochs:g} epoch(s) in all).")
    if config.epochs != saved.epochs and config.schedule != "constant":
        print(f"Note: the {config.schedule} learning-rate schedule now spans {config.epochs:g} epochs, so the "
              f"learning rate continues from where a {config.epochs:g}-epoch schedule is at step {step}.")


def new_run(args, env: distributed.DistEnv) -> int:
    config = config_from_args(args)
    tensorboard = tensorboard_on(args.tensorboard)  # asked for without the package: refused before any work
    if env.distributed:
        config = config.replace(device=env.device)  # this rank's GPU (cuda:LOCAL_RANK) or the CPU
    # Everything that can fail on bad input fails here, before a run folder is created.
    splits = lifecycle.load_data(config, env)
    print_notes(splits, env)
    out_dir = args.out if args.out is not None else default_run_dir(config.model)
    if not env.distributed:  # (under torchrun a rank leaving here would strand the others)
        signals.check()  # the last safe point before a run folder exists
    with ExitStack() as held:  # the run folder is this process's until the run ends
        out = distributed.shared_outcome(  # a bad --out stops every rank, reported once
            env, lambda: lifecycle.claim_new_run(held, out_dir, undo_on=signals.STOPS), run_here=env.is_main)
        train_and_report(config, out, splits=splits, env=env, progress=args.progress, report=args.report,
                         tensorboard=tensorboard)
    if env.is_main:
        signals.check(f"after the run had finished (its results are in {out}/)")
    return 0


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
            return resume_run(args, env) if args.resume is not None else new_run(args, env)
    except UserError as exc:
        # The ranks share config and data: rank 0 reports their errors. A timeout is each rank's own
        # (rank 0 may be the one that stopped answering), so every rank reports it.
        if distributed.launched_rank() != 0 and not isinstance(exc, distributed.PeerFailure):
            raise SystemExit(2) from None
        raise
