"""The console side of a training run, shared by `train` and `chapter`: progress, Ctrl-C/SIGTERM with
the command that resumes, TensorBoard events, the results and the report named at the end. The run
itself is engine/run.py."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from alexnet_lab.cli import signals
from alexnet_lab.cli.interrupt import GracefulInterrupt, ImmediateExit, Interrupted
from alexnet_lab.cli.progress import ConsoleReporter, add_progress, chapter_lines
from alexnet_lab.engine import distributed
from alexnet_lab.engine.builders import Splits
from alexnet_lab.engine.config import TrainConfig, unused_settings
from alexnet_lab.engine.run import fit_into
from alexnet_lab.engine.trainer import StopRequested
from alexnet_lab.errors import UserError
from alexnet_lab.reports.plots import plot_curves
from alexnet_lab.reports.report import build_report
from alexnet_lab.reports.tensorboard import FOLDER as TENSORBOARD_FOLDER, TensorBoardLogger, unavailable


def add_output(parser) -> None:
    """What a run shows while it trains and leaves at the end."""
    add_progress(parser)
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="do not write report.html into the run folder at the end")
    parser.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                        help="write TensorBoard event files into RUN_DIR/tensorboard/: the curves as "
                             "training goes; the confusion matrix, first-layer filters and the config "
                             "(hparams) at the end. Default: on when the tensorboard package is installed")


def tensorboard_on(asked: bool | None) -> bool:
    """--tensorboard / --no-tensorboard resolved: unset means on when the package can be imported;
    asked for without it, a UserError with the command that installs it."""
    if asked is False:
        return False
    missing = unavailable()
    if missing is not None and asked:
        raise UserError(f"--tensorboard needs the tensorboard package, which cannot be imported here ({missing}). "
                        "Install it: pip install tensorboard   (or run without --tensorboard).")
    return missing is None


def resume_hint(out: Path) -> str:
    return f"alexnet-lab train --resume {shlex.quote(str(out))}"


def print_notes(splits: Splits, env: distributed.DistEnv) -> None:
    if env.is_main:
        for note in splits.notes:  # e.g. the unreadable image files that were skipped, listed once
            print(note, file=sys.stderr)


def train_and_report(config: TrainConfig, out: Path | None, *, splits: Splits, resume: dict | None = None,
                     env: distributed.DistEnv = distributed.DistEnv(), progress: str = "auto",
                     report: bool = True, tensorboard: bool | None = None) -> dict:
    """Train `config` into run folder `out`, showing progress; return the summary.

    The first Ctrl-C/SIGTERM stops at the next step boundary with a checkpoint, the second at
    once; either way `Interrupted` (exit status 130/143) is raised with the command that resumes.
    Under torchrun only rank 0 writes files and prints (the others pass out=None); every rank
    trains its shard and the metrics are all-reduced, so rank 0 reports the whole dataset.
    `tensorboard`: also write RUN_DIR/tensorboard/ (None: when the package is installed).
    """
    if not env.is_main:
        return _train_other_rank(config, splits=splits, resume=resume, env=env)
    events = (TensorBoardLogger(out, config, splits, resumed_state=resume["run_state"] if resume else None)
              if tensorboard_on(tensorboard) else None)
    interrupt = GracefulInterrupt()
    # From here a signal stops training at a step boundary with a checkpoint; one that came during
    # start-up counts (GracefulInterrupt takes it over) and stops the run before any file is written.
    with interrupt:
        if interrupt.should_stop() and not env.distributed:  # under torchrun the ranks stop together, in fit
            raise Interrupted(f"Stopped by {interrupt.signal_name} before training started; nothing was written.",
                              interrupt.exit_code)
        reporter = ConsoleReporter(config, out, mode=progress)
        # The full recipe, as saved in config.json: a preset is just a named config.
        hidden = {"preset", "data_dir"} | unused_settings(config)
        print(f"Config ({config.preset}): " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()
                                                        if k not in hidden), flush=True)
        if events is not None:
            print(tensorboard_line(out), flush=True)
        started = time.perf_counter()
        try:
            with _closed(events, out):
                summary = fit_into(config, out, [reporter, interrupt, *([events] if events else [])],
                                   splits=splits, resume=resume, env=env, draw_curves=plot_curves)
        except StopRequested as stop:
            raise Interrupted(f"Interrupted at step {stop.payload['run_state']['step']}; checkpoint saved in "
                              f"{out / 'checkpoint.pt'}; resume with: {resume_hint(out)} (the run so far: "
                              f"alexnet-lab report {shlex.quote(str(out))})", interrupt.exit_code) from None
        except ImmediateExit as stop:
            raise Interrupted(_stopped_at_once(out), stop.exit_code) from None
        finally:
            reporter.close()
    distributed.teardown(env)  # every rank leaves the job together, now: what follows is rank 0's alone
    if interrupt.should_stop():  # the signal came after the last step (e.g. in the final evaluation)
        raise Interrupted(f"Stopped on {interrupt.signal_name} after the last step: the run had finished, and "
                          f"its results and final checkpoint are in {out}/.", interrupt.exit_code)
    _print_results(config, summary, out, time.perf_counter() - started, tensorboard=events is not None)
    if events is not None and events.note:
        print(events.note)
    if report:
        write_report(out, summary["device"], config.data_dir)
    return summary


def tensorboard_line(out: Path) -> str:
    """Where the events go and the command that shows them (the folder above compares the runs in it)."""
    return (f"TensorBoard: events in {out / TENSORBOARD_FOLDER}/; view with: tensorboard --logdir "
            f"{shlex.quote(str(out))}   (--logdir {shlex.quote(str(out.parent))} compares the runs there)")


@contextmanager
def _closed(events: TensorBoardLogger | None, out: Path):
    """The TensorBoard writer is closed however training ends. A run stopped on a signal before its first
    checkpoint takes its event files back, as claim_new_run undoes the run's other files then."""
    if events is None:
        yield
        return
    try:
        yield
    except (StopRequested, *signals.STOPS):
        if not (out / "checkpoint.pt").exists():
            events.discard()
        raise
    finally:
        events.close()


def _train_other_rank(config: TrainConfig, *, splits: Splits, resume: dict | None, env) -> dict:
    """A rank other than 0: trains its shard, writes and prints nothing."""
    interrupt = GracefulInterrupt()
    try:
        with interrupt:
            summary = fit_into(config, None, [interrupt], splits=splits, resume=resume, env=env)
    except (StopRequested, ImmediateExit):
        raise SystemExit(interrupt.exit_code or 130) from None  # rank 0 says how to resume
    distributed.teardown(env)  # with rank 0, as it does in train_and_report
    return summary


def _stopped_at_once(out: Path) -> str:
    saved = (f"the last checkpoint ({out / 'checkpoint.pt'}) is intact; resume with: {resume_hint(out)}"
             if (out / "checkpoint.pt").exists() else "no checkpoint had been written yet, so there is "
             "nothing to resume")
    return f"Stopped at once on the second signal, without saving; {saved}"


def _print_results(config: TrainConfig, summary: dict, out: Path, seconds: float, tensorboard: bool = False) -> None:
    print(chapter_lines(summary))
    print(f"wall-clock {seconds:.1f} s"
          + (f"; reached test acc {config.target_accuracy} in {summary['time_to_target_s']:.1f} s"
             if summary.get("time_to_target_s") is not None else "")
          + (f"; training stopped at its time budget (--time-budget-s {config.time_budget_s:g}) after "
             f"{summary['steps']:,} steps" if summary.get("stopped_at_time_budget") else ""))
    print(f"Results in {out}/: summary.json, metrics.jsonl, metrics.csv, curves.svg, curves.png, checkpoint.pt"
          + (f", {TENSORBOARD_FOLDER}/" if tensorboard else ""), flush=True)


def write_report(out: Path, device: str, data_dir: str | None) -> None:
    """The run's report.html, named on the last line; a problem with it never fails the finished run."""
    try:
        path = build_report([out], device=device, data_dir=data_dir)
    except (UserError, OSError, RuntimeError) as exc:  # RuntimeError: e.g. out of GPU memory while evaluating
        print(f"Report not written ({type(exc).__name__}: {exc}); try: alexnet-lab report {shlex.quote(str(out))}")
        return
    print(f"Report: {path}   (open it in a browser; every figure is inside the file)")
