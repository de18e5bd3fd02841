"""The console side of a training run, shared by `train` and `chapter`: what is about to train,
progress, Ctrl-C/SIGTERM with the command that resumes, TensorBoard events, the results and the report
named at the end. The run itself is engine/run.py's `train`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from alexnet_lab.cli.interrupt import GracefulInterrupt, ImmediateExit, Interrupted
from alexnet_lab.cli.progress import ConsoleReporter, add_progress, chapter_lines
from alexnet_lab.engine import distributed, run as lifecycle
from alexnet_lab.engine.builders import Splits
from alexnet_lab.engine.config import TrainConfig, make_config, unused_settings
from alexnet_lab.engine.run_dir import PREDICTIONS, default_run_dir
from alexnet_lab.engine.trainer import Callback, StopRequested
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


def run_training(config: TrainConfig | None, out=None, *, resume: lifecycle.Resume | None = None,
                 splits: Splits | None = None, env: distributed.DistEnv = distributed.DistEnv(),
                 progress: str = "auto", report: bool = True, tensorboard: bool | None = None) -> dict:
    """Train `config` into run folder `out` (default runs/<timestamp>-<model>), or continue `resume`,
    through engine.run.train, showing what trains and its progress; return the summary.

    From the first line here a Ctrl-C/SIGTERM stops the run: before training with nothing written (a
    new folder is removed), during training at the next step boundary with a checkpoint, a second one at
    once; either way `Interrupted` (exit status 130/143) is raised with the command that resumes. Under
    torchrun only rank 0 writes files and prints; every rank trains its shard and the metrics are
    all-reduced, so rank 0 reports the whole dataset. `tensorboard`: also write RUN_DIR/tensorboard/
    (None: when the package is installed)."""
    if resume is None and out is None:
        out = default_run_dir(config.model)
    if not env.is_main:
        return _train_other_rank(config, out, resume=resume, splits=splits, env=env)
    folder = Path(resume.run_dir if resume is not None else out)
    events = TensorBoardLogger(folder) if tensorboard_on(tensorboard) else None
    start, reporter, interrupt = RunStart(events is not None), ConsoleReporter(out=folder, mode=progress), \
        GracefulInterrupt()
    try:
        with interrupt:
            summary = lifecycle.train(config, out, resume=resume, env=env, splits=splits, draw_curves=plot_curves,
                                      callbacks=[start, reporter, interrupt, *([events] if events else [])])
    except StopRequested as stop:
        raise Interrupted(_stopped(stop, folder, interrupt.signal_name), interrupt.exit_code) from None
    except ImmediateExit as stop:
        raise Interrupted(_stopped_at_once(folder), stop.exit_code) from None
    finally:
        reporter.close()
    if interrupt.should_stop():  # the signal came after the last step (e.g. in the final evaluation)
        raise Interrupted(f"Stopped on {interrupt.signal_name} after the last step: the run had finished, and "
                          f"its results and final checkpoint are in {folder}/.", interrupt.exit_code)
    _print_results(summary, folder, time.perf_counter() - start.started, tensorboard=events is not None)
    if events is not None and events.note:
        print(events.note)
    if report:
        write_report(folder, summary["device"])
    return summary


class RunStart(Callback):
    """Says what is about to train once the run is prepared: the data's notes (e.g. the image files
    skipped), a resume's position, the full recipe (as saved in config.json: a preset is just a named
    config) and where TensorBoard's events go; starts the clock of the closing wall-clock line."""

    def __init__(self, tensorboard: bool):
        self.tensorboard, self.started = tensorboard, time.perf_counter()

    def on_prepared(self, run: lifecycle.Prepared) -> None:
        for note in run.splits.notes:
            print(note, file=sys.stderr)
        if run.resumed is not None:
            if run.data_changed:
                print("Note: --allow-data-change: the data differ from those the run started with; continuing on them.")
            describe_resume(run.out, run.resumed, run.config, run.saved)
        print(recipe_line(run.config, run.out), flush=True)
        if self.tensorboard:
            print(tensorboard_line(run.out), flush=True)
        self.started = time.perf_counter()

    def on_train_end(self, summary: dict) -> None:
        if self.tensorboard:  # TensorBoard's logger draws its images next (it is the last callback)
            print("Drawing TensorBoard's final images (confusion matrix, first-layer filters)...", flush=True)


def recipe_line(config: TrainConfig, out) -> str:
    """The recipe as what differs from the book's (the d2l preset), the settings that change nothing left
    out; the whole config is in config.json."""
    book = make_config("d2l").to_dict()
    hidden = {"preset", "data_dir", "device", "ddp_timeout", "log_points_per_epoch"} | unused_settings(config)
    changed = [f"{k}={'auto' if v is None and k == 'channels_last' else v}" for k, v in config.to_dict().items()
               if k not in hidden and v != book.get(k)]
    where = f" (all settings: {Path(out) / 'config.json'})" if out is not None else ""
    return (f"Recipe ({config.preset}): the book's d2l recipe" + (" with " + ", ".join(changed) if changed else "")
            + where)


def describe_resume(out, payload: dict, config: TrainConfig, saved: TrainConfig) -> None:
    step = payload["run_state"].get("step", 0)
    print(f"Resuming {out} at step {step} (epoch {payload['run_state'].get('epoch', 0) + 1}, "
          f"{config.epochs:g} epoch(s) in all).")
    if config.epochs != saved.epochs and config.schedule != "constant":
        print(f"Note: the {config.schedule} learning-rate schedule now spans {config.epochs:g} epochs, so the "
              f"learning rate continues from where a {config.epochs:g}-epoch schedule is at step {step}.")


def tensorboard_line(out: Path) -> str:
    """Where the events go and the command that shows them (the folder above compares the runs in it)."""
    return (f"TensorBoard: events in {out / TENSORBOARD_FOLDER}/; view with: tensorboard --logdir "
            f"{shlex.quote(str(out))}   (--logdir {shlex.quote(str(out.parent))} compares the runs there)")


def _train_other_rank(config, out, *, resume, splits, env) -> dict:
    """A rank other than 0: trains its shard, writes and prints nothing."""
    interrupt = GracefulInterrupt()
    try:
        with interrupt:
            return lifecycle.train(config, out, resume=resume, env=env, splits=splits, callbacks=[interrupt])
    except (StopRequested, ImmediateExit):
        raise SystemExit(interrupt.exit_code or 130) from None  # rank 0 says how to resume


def _stopped(stop: StopRequested, out: Path, signal_name: str) -> str:
    if stop.payload is None:
        return f"Stopped by {signal_name} before training started; nothing was written."
    return (f"Interrupted at step {stop.payload['run_state']['step']}; checkpoint saved in {out / 'checkpoint.pt'}; "
            f"resume with: {resume_hint(out)} (the run so far: alexnet-lab report {shlex.quote(str(out))})")


def _stopped_at_once(out: Path) -> str:
    saved = (f"the last checkpoint ({out / 'checkpoint.pt'}) is intact; resume with: {resume_hint(out)}"
             if (out / "checkpoint.pt").exists() else "no checkpoint had been written yet, so there is "
             "nothing to resume")
    return f"Stopped at once on the second signal, without saving; {saved}"


def _print_results(summary: dict, out: Path, seconds: float, tensorboard: bool = False) -> None:
    print(chapter_lines(summary))
    print(f"wall-clock {seconds:.1f} s"
          + (f"; reached test acc {summary['target_accuracy']} in {summary['time_to_target_s']:.1f} s"
             if summary.get("time_to_target_s") is not None else "")
          + (f"; training stopped at its time budget (--time-budget-s {summary['time_budget_s']:g}) after "
             f"{summary['steps']:,} steps" if summary.get("stopped_at_time_budget") else ""))
    kept = [name for name in (PREDICTIONS, "best.pt", "checkpoint.pt") if (out / name).is_file()]
    print(f"Results in {out}/: summary.json, metrics.jsonl, metrics.csv, curves.svg, curves.png, {', '.join(kept)}"
          + (f", {TENSORBOARD_FOLDER}/" if tensorboard else ""), flush=True)


def write_report(out: Path, device: str) -> None:
    """The run's report.html, named on the last line; a problem with it never fails the finished run."""
    try:
        path = build_report([out], device=device)
    except (UserError, OSError, RuntimeError) as exc:  # RuntimeError: e.g. out of memory while drawing
        print(f"Report not written ({type(exc).__name__}: {exc}); try: alexnet-lab report {shlex.quote(str(out))}")
        return
    print(f"Report: {path}   (open it in a browser; every figure is inside the file)")
