"""`alexnet-lab train`: train a model with a preset recipe and write a run folder.

`--resume RUN_DIR` continues an interrupted run; Ctrl-C/SIGTERM stop it with a checkpoint.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from alexnet_lab.cli.interrupt import GracefulInterrupt, ImmediateExit, Interrupted
from alexnet_lab.cli.options import add_training, flag_name, training_overrides
from alexnet_lab.cli.progress import ConsoleReporter, add_progress, chapter_lines
from alexnet_lab.engine import distributed
from alexnet_lab.engine.checkpoint import check_resumable, check_same_data, load_checkpoint
from alexnet_lab.engine.config import TrainConfig, make_config
from alexnet_lab.engine.builders import Splits, splits_for
from alexnet_lab.engine.preflight import preflight
from alexnet_lab.engine.trainer import StopRequested, fit
from alexnet_lab.errors import UserError
from alexnet_lab.reports.report import build_report
from alexnet_lab.reports.run_dir import RunWriter, claim_run_dir, default_run_dir

NAME = "train"
HELP = "train a model (default: the chapter's AlexNet with the book's d2l recipe)"

RESUME_ADVICE = ("--resume reads only the run's checkpoint.pt: to continue from its best.pt instead, copy "
                 "best.pt over checkpoint.pt (the steps after it are trained again), or start a new run with --out.")


def _resumable_flags() -> str:
    """The flags that may be given with --resume (fields declared `resumable`). Everything else is the
    run's recipe and data order, which a resumed run keeps. --epochs may only grow (to extend a run)."""
    return ", ".join(flag_name(name) for name in TrainConfig.resumable_fields())


def add_arguments(parser) -> None:
    add_training(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<timestamp>-<model>)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its checkpoint.pt with the config saved "
                             f"there; only {_resumable_flags()} may be given with it (--epochs only to "
                             "extend the run)")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="with --resume: continue even though the data differ from those the run "
                             "started with (their fingerprint is saved in the checkpoint)")
    add_output(parser)


def add_output(parser) -> None:
    """What a run shows while it trains and leaves at the end (shared with `chapter`)."""
    add_progress(parser)
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="do not write report.html into the run folder at the end")


def config_from_args(args) -> TrainConfig:
    return make_config(args.preset or "d2l", **training_overrides(args))


def resume_hint(out: Path) -> str:
    return f"alexnet-lab train --resume {shlex.quote(str(out))}"


def train_and_report(config: TrainConfig, out: Path | None, *, splits: Splits | None = None,
                     resume: dict | None = None, env: distributed.DistEnv = distributed.DistEnv(),
                     progress: str = "auto", report: bool = True) -> dict:
    """Train `config` into run folder `out`, showing progress; return the summary.

    The first Ctrl-C/SIGTERM stops at the next step boundary with a checkpoint, the second at
    once; either way `Interrupted` (exit status 130/143) is raised with the command that resumes.
    Under torchrun only rank 0 writes files and prints (the others pass out=None); every rank
    trains its shard and the metrics are all-reduced, so rank 0 reports the whole dataset.
    """
    interrupt = GracefulInterrupt()
    fit_kwargs = {"splits": splits, "resume": resume, **env.fit_kwargs()}
    if not env.is_main:
        try:
            with interrupt:
                return fit(config, [interrupt], **fit_kwargs)
        except (StopRequested, ImmediateExit):
            raise SystemExit(interrupt.exit_code or 130) from None  # rank 0 says how to resume
    rows = resume["run_state"]["metrics"] if resume is not None else None
    writer = RunWriter(out, config.to_dict(), rows=rows)
    reporter = ConsoleReporter(config, out, mode=progress)
    # The full recipe, as saved in config.json: a preset is just a named config.
    print(f"Config ({config.preset}): " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()
                                                    if k not in ("preset", "data_dir")), flush=True)
    started = time.perf_counter()
    try:
        with interrupt:
            summary = fit(config, [writer, reporter, interrupt], **fit_kwargs)
    except StopRequested as stop:
        raise Interrupted(f"Interrupted at step {stop.payload['run_state']['step']}; checkpoint saved in "
                          f"{out / 'checkpoint.pt'}; resume with: {resume_hint(out)} (the run so far: "
                          f"alexnet-lab report {shlex.quote(str(out))})",
                          interrupt.exit_code) from None
    except ImmediateExit as stop:
        saved = (f"the last checkpoint ({out / 'checkpoint.pt'}) is intact; resume with: {resume_hint(out)}"
                 if (out / "checkpoint.pt").exists() else "no checkpoint had been written yet, so there is "
                 "nothing to resume")
        raise Interrupted(f"Stopped at once on the second signal, without saving; {saved}",
                          stop.exit_code) from None
    finally:
        reporter.close()
    if interrupt.should_stop():  # the signal came after the last step (e.g. in the final evaluation)
        raise Interrupted(f"Stopped on {interrupt.signal_name} after the last step: the run had finished, and "
                          f"its results and final checkpoint are in {out}/.", interrupt.exit_code)
    print(chapter_lines(summary))
    print(f"wall-clock {time.perf_counter() - started:.1f} s"
          + (f"; reached test acc {config.target_accuracy} in {summary['time_to_target_s']:.1f} s"
             if summary.get("time_to_target_s") is not None else ""))
    print(f"Results in {out}/: summary.json, metrics.jsonl, curves.svg, curves.png, checkpoint.pt", flush=True)
    if report:
        write_report(out, summary["device"], config.data_dir)
    return summary


def write_report(out: Path, device: str, data_dir: str | None) -> None:
    """The run's report.html, named on the last line; a problem with it never fails the finished run."""
    try:
        path = build_report([out], device=device, data_dir=data_dir)
    except (UserError, OSError, RuntimeError) as exc:  # RuntimeError: e.g. out of GPU memory while evaluating
        print(f"Report not written ({type(exc).__name__}: {exc}); try: alexnet-lab report {shlex.quote(str(out))}")
        return
    print(f"Report: {path}   (open it in a browser; every figure is inside the file)")


def _load_splits(config: TrainConfig, env: distributed.DistEnv) -> Splits:
    """The data, loaded by one process per machine at a time (at most one download)."""
    splits = distributed.in_turn(env, lambda: splits_for(config))
    if env.is_main:
        for note in splits.notes:  # e.g. the unreadable image files that were skipped, listed once
            print(note, file=sys.stderr)
    return splits


def resume_config(args, saved: TrainConfig) -> TrainConfig:
    """The saved config with the flags allowed on resume applied; any other flag is an error."""
    given = {key: value for key, value in training_overrides(args).items() if value is not None}
    if args.preset is not None:
        given["preset"] = args.preset
    fixed = sorted(set(given) - set(TrainConfig.resumable_fields()))
    if fixed:
        flags = ", ".join(flag_name(key) for key in fixed)
        raise UserError(f"{flags} cannot change when resuming: a resumed run keeps the recipe and data "
                        f"order saved in its checkpoint. With --resume only {_resumable_flags()} may be "
                        "given; to change the recipe start a new run with --out.")
    if given.get("epochs", saved.epochs) < saved.epochs:
        raise UserError(f"--epochs {given['epochs']:g} is less than the run's {saved.epochs:g}: on resume "
                        "--epochs may only grow (to extend a run).")
    return saved.replace(**given)


def resume_run(args, env: distributed.DistEnv) -> int:
    if not args.resume.strip():
        raise UserError("--resume is empty. Pass the run folder that holds checkpoint.pt.")
    out = Path(args.resume)
    if args.out is not None and Path(args.out).resolve() != out.resolve():
        raise UserError("--out cannot be combined with --resume: the run continues in its own folder "
                        f"'{out}'.")
    if not out.is_dir():
        raise UserError(f"--resume '{out}' is not a folder. Pass the run folder that holds checkpoint.pt.")
    path = out / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"'{out}' holds no checkpoint.pt to resume from (the run stopped before its first "
                        "checkpoint, or this is not a run folder). Start the run again with --out.")
    with ExitStack() as held:  # the folder is this process's from before its checkpoint is read until the end
        distributed.shared_outcome(env, lambda: held.enter_context(claim_run_dir(out, resume=True, flag="--resume")),
                                   run_here=env.is_main)
        payload = load_checkpoint(path, advice=RESUME_ADVICE)
        check_resumable(payload, path)
        try:
            saved = TrainConfig.from_dict(payload["config"])
        except (UserError, TypeError) as exc:
            raise UserError(f"Checkpoint '{path}' holds a config this version cannot use ({exc}).") from None
        config = resume_config(args, saved)
        if env.distributed:
            config = config.replace(device=env.device)
        _check_not_finished(out, payload["run_state"].get("step", 0), config, saved)
        preflight(config)
        splits = _load_splits(config, env)
        preflight(config, len(splits.train_images), env.world_size)
        if not check_same_data(payload, splits.fingerprint, out, allow=args.allow_data_change) and env.is_main:
            print("Note: --allow-data-change: the data differ from those the run started with; continuing on them.")
        _resume_in(out, config, saved, payload, splits, env, progress=args.progress, report=args.report)
    return 0


def _check_not_finished(out: Path, step: int, config: TrainConfig, saved: TrainConfig) -> None:
    summary_path = out / "summary.json"
    if summary_path.is_file() and config.epochs == saved.epochs:
        try:
            finished_steps = json.loads(summary_path.read_text()).get("steps")
        except (OSError, ValueError, AttributeError):
            finished_steps = None
        if finished_steps == step:
            raise UserError(f"The run in '{out}' already finished its {saved.epochs:g} epoch(s) "
                            f"({step} steps). To train it further pass a larger --epochs with --resume.")


def _resume_in(out: Path, config: TrainConfig, saved: TrainConfig, payload: dict, splits: Splits,
               env: distributed.DistEnv, *, progress: str = "auto", report: bool = True) -> None:
    step = payload["run_state"].get("step", 0)
    if not env.is_main:
        train_and_report(config, None, splits=splits, resume=payload, env=env)
        return
    print(f"Resuming {out} at step {step} (epoch {payload['run_state'].get('epoch', 0) + 1}, "
          f"{config.epochs:g} epoch(s) in all).")
    if config.epochs != saved.epochs and config.schedule != "constant":
        print(f"Note: the {config.schedule} learning-rate schedule now spans {config.epochs:g} epochs, so the "
              f"learning rate continues from where a {config.epochs:g}-epoch schedule is at step {step}.")
    train_and_report(config, out, splits=splits, resume=payload, env=env, progress=progress, report=report)


def run(args) -> int:
    try:
        with distributed.session(args.device or "auto") as env:
            if args.resume is not None:
                return resume_run(args, env)
            config = config_from_args(args)
            if env.distributed:
                config = config.replace(device=env.device)  # this rank's GPU (cuda:LOCAL_RANK) or the CPU
            # Everything that can fail on bad input fails here, before a run folder is created.
            preflight(config)
            splits = _load_splits(config, env)
            preflight(config, len(splits.train_images), env.world_size)
            out_dir = args.out if args.out is not None else default_run_dir(config.model)
            with ExitStack() as held:  # the run folder is this process's until the run ends
                out = distributed.shared_outcome(  # a bad --out stops every rank, reported once
                    env, lambda: held.enter_context(claim_run_dir(out_dir)), run_here=env.is_main)
                train_and_report(config, out, splits=splits, env=env, progress=args.progress,
                                 report=args.report)
            return 0
    except UserError:
        if distributed.launched_rank() != 0:  # the ranks share config and data: rank 0 reports it
            raise SystemExit(2) from None
        raise
