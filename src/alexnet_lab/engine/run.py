"""A training run's life, one function: `train` checks, loads the data once, claims a new folder (undone
on an early stop) or checks a resume (every resume rule), fits, tests once after the last step and
saves what it found. No argparse and no printing: `train`, `chapter`, `sweep` and `record` call it; the
CLI parses, prints (callbacks) and handles signals.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from alexnet_lab.engine import checkpoint as ckpt, distributed
from alexnet_lab.engine.builders import Splits, splits_for
from alexnet_lab.engine.config import TrainConfig, flag_name
from alexnet_lab.engine.preflight import preflight
from alexnet_lab.engine.run_dir import RUN_FILES, DrawCurves, RunWriter, claim_run_dir
from alexnet_lab.engine.schema import check_checkpoint
from alexnet_lab.engine.trainer import Callback, StopRequested, fit
from alexnet_lab.errors import UserError

RESUME_ADVICE = ("--resume reads only the run's checkpoint.pt (best.pt holds the best weights for predicting, "
                 "not the optimizer's state a run continues from): restore checkpoint.pt from a copy, or start "
                 "a new run with --out.")


@dataclass(frozen=True)
class Resume:
    """A request to continue the run in `run_dir`: the settings given with it (only those set) and
    whether it may continue on data that differ from those it started with."""
    run_dir: str
    given: dict = field(default_factory=dict)
    allow_data_change: bool = False


@dataclass(frozen=True)
class Prepared:
    """A run about to train (what `Callback.on_prepared` receives): its config and data, its folder
    (None: no files, or not the process that writes them) and, for a resume, the checkpoint payload it
    continues from, the config saved there and whether the data changed since."""
    config: TrainConfig
    splits: Splits
    out: Path | None
    resumed: dict | None = None
    saved: TrainConfig | None = None
    data_changed: bool = False


def train(config: TrainConfig | None, out: str | os.PathLike | None = None, *, resume: Resume | None = None,
          env: distributed.DistEnv = distributed.DistEnv(), callbacks: Sequence[Callback] = (),
          draw_curves: DrawCurves | None = None, splits: Splits | None = None) -> dict:
    """Train `config` into the run folder `out` (None: no folder, e.g. `record`'s seeds), or continue
    the run `resume` names (`config` None, `out` None or its folder); return the summary.

    In order: the checks that need no data; the data (`splits`, or read once per machine); the memory
    check; the folder claimed and locked for the run's life; the callbacks' `on_prepared`; `fit`, with
    RunWriter writing the folder, which keeps the last test pass (predictions.csv, summary.json). A callback
    asking to stop (`should_stop`, a signal) before training starts raises `StopRequested(None)`; a new
    folder left by a stop before the first checkpoint is removed, with the parents it made."""
    def stop_here() -> None:  # under torchrun the ranks stop together, in fit
        if not env.distributed and any(cb.should_stop() for cb in callbacks):
            raise StopRequested(None)

    with ExitStack() as held:
        if resume is not None:
            run = _prepare_resume(held, resume, out, env, stop_here)
        else:
            config = config.replace(device=env.device) if env.distributed else config
            splits = _checked_data(config, env, splits)
            if out is not None:
                stop_here()  # the last safe point before a run folder exists
                out = distributed.shared_outcome(env, lambda: _claim_new_run(held, out), run_here=env.is_main)
            run = Prepared(config, splits, out if env.is_main else None)
        for callback in callbacks:
            callback.on_prepared(run)
        held.push(lambda _type, exc, _traceback: _exit(callbacks, _stopped_early(exc, run.out)))
        stop_here()
        writer = [] if run.out is None else [RunWriter(run.out, run.config.to_dict(), resumed=run.resumed,
                                                       draw_curves=draw_curves, val_files=run.splits.test_files)]
        summary = fit(run.config, [*writer, *callbacks], splits=run.splits, resume=run.resumed, **env.fit_kwargs())
    distributed.teardown(env)  # every rank leaves the job together, now: what follows is rank 0's alone
    return summary


def _exit(callbacks: Sequence[Callback], taken_back: bool) -> None:
    for callback in callbacks:  # before a new folder is taken back: their files go first
        callback.on_exit(taken_back)


# --- data ------------------------------------------------------------------------------------------

def load_data(config: TrainConfig, env: distributed.DistEnv = distributed.DistEnv()) -> Splits:
    """The run's data (the one door, `splits_for`), read by one process per machine at a time (at
    most one download), after the checks that need no data."""
    preflight(config)
    return distributed.in_turn(env, lambda: splits_for(config))


def _checked_data(config: TrainConfig, env: distributed.DistEnv, splits: Splits | None) -> Splits:
    """`splits` (data read once for several runs) or the config's data, then the checks that need it
    (the memory one training step takes)."""
    splits = splits if splits is not None else load_data(config, env)
    preflight(config, len(splits.train_images), env.world_size)
    return splits


# --- a new run ---------------------------------------------------------------------------------------

def _claim_new_run(held: ExitStack, out_dir: str | os.PathLike) -> Path:
    """`claim_run_dir(out_dir)` for a new run, held until `held` closes, and undone if a stop (a
    StopRequested, a signal's KeyboardInterrupt or other BaseException) leaves before the first
    checkpoint: the run files this process wrote are removed, then the folders it made (the run folder,
    and parents `mkdir -p` made), each only if empty. Nothing that was there before is touched."""
    made = _missing_folders(Path(out_dir))
    held.push(lambda *exc: _remove_folders(made) if made and _stopped_early(exc[1], made[0]) else None)
    out = held.enter_context(claim_run_dir(out_dir))  # the folder is unlocked before the push above runs
    before = set(os.listdir(out))  # a new run's folder is empty (claim_run_dir checks), or holds the lock
    held.push(lambda *exc: _remove_run_files(out, before) if _stopped_early(exc[1], out) else None)
    return out


def _stopped_early(exc: BaseException | None, folder: Path | None) -> bool:
    """Whether `exc` is a stop (StopRequested, a signal's KeyboardInterrupt or other BaseException) that
    left before `folder`'s first checkpoint."""
    stop = isinstance(exc, StopRequested) or (exc is not None and not isinstance(exc, Exception))
    return stop and folder is not None and not os.path.lexists(folder / "checkpoint.pt")


def _missing_folders(path: Path) -> list[Path]:
    """The folders `path.mkdir(parents=True)` is about to create, deepest first."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_run_files(out: Path, before: set[str]) -> None:
    for name in RUN_FILES:
        if name not in before:
            (out / name).unlink(missing_ok=True)


def _remove_folders(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; a folder something else has put a file into stays
        try:
            folder.rmdir()
        except OSError:
            return


# --- resuming ----------------------------------------------------------------------------------------

def _prepare_resume(held: ExitStack, request: Resume, out, env: distributed.DistEnv, stop_here) -> Prepared:
    """Every resume rule, with the run folder this process's from before its checkpoint is read."""
    path = resume_checkpoint(request.run_dir, out)
    folder = path.parent
    stop_here()  # the last safe point before the run folder is touched
    distributed.shared_outcome(env, lambda: held.enter_context(claim_run_dir(folder, resume=True, flag="--resume")),
                               run_here=env.is_main)
    payload = ckpt.load_checkpoint(path, advice=RESUME_ADVICE)
    saved = check_checkpoint(payload, path, for_resume=True, advice=RESUME_ADVICE)
    config = resume_config(saved, request.given)
    if env.distributed:  # this rank's device, and the timeout the job was joined with
        config = config.replace(device=env.device, ddp_timeout=env.timeout_s)
    check_not_finished(folder, payload, config, saved)
    splits = _checked_data(config, env, None)
    same = ckpt.check_same_data(payload, splits.fingerprint, folder, allow=request.allow_data_change)
    return Prepared(config, splits, folder if env.is_main else None, payload, saved, data_changed=not same)


def resumable_flags() -> str:
    """The flags that may be given with --resume (fields declared `resumable`). Everything else is the
    run's recipe and data order, which a resumed run keeps. --epochs may only grow (to extend a run)."""
    return ", ".join(flag_name(name) for name in TrainConfig.resumable_fields())


def resume_checkpoint(run_dir: str, out: str | os.PathLike | None = None) -> Path:
    """The checkpoint.pt a resume of `run_dir` reads, after the checks that need no file read."""
    if not run_dir.strip():
        raise UserError("--resume is empty. Pass the run folder that holds checkpoint.pt.")
    folder = Path(run_dir)
    if out is not None and Path(out).resolve() != folder.resolve():
        raise UserError("--out cannot be combined with --resume: the run continues in its own folder "
                        f"'{folder}'.")
    if not folder.is_dir():
        raise UserError(f"--resume '{folder}' is not a folder. Pass the run folder that holds checkpoint.pt.")
    path = folder / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"'{folder}' holds no checkpoint.pt to resume from (the run stopped before its first "
                        "checkpoint, or this is not a run folder). Start the run again with --out.")
    return path


def resume_config(saved: TrainConfig, given: dict) -> TrainConfig:
    """The saved config with the settings allowed on resume (`given`, only those set) applied; any other
    setting is an error, and --epochs may only grow."""
    fixed = sorted(set(given) - set(TrainConfig.resumable_fields()))
    if fixed:
        flags = ", ".join(flag_name(key) for key in fixed)
        raise UserError(f"{flags} cannot change when resuming: a resumed run keeps the recipe and data "
                        f"order saved in its checkpoint. With --resume only {resumable_flags()} may be "
                        "given; to change the recipe start a new run with --out.")
    if given.get("epochs", saved.epochs) < saved.epochs:
        raise UserError(f"--epochs {given['epochs']:g} is less than the run's {saved.epochs:g}: on resume "
                        "--epochs may only grow (to extend a run).")
    return saved.replace(**given)


def check_not_finished(out: Path, payload: dict, config: TrainConfig, saved: TrainConfig) -> None:
    """A finished run resumes only to train further (a larger --epochs)."""
    step = payload["run_state"].get("step", 0)
    summary_path = out / "summary.json"
    if not summary_path.is_file() or config.epochs != saved.epochs:
        return
    try:
        finished_steps = json.loads(summary_path.read_text()).get("steps")
    except (OSError, ValueError, AttributeError, RecursionError):
        finished_steps = None
    if finished_steps == step:
        raise UserError(f"The run in '{out}' already finished its {saved.epochs:g} epoch(s) "
                        f"({step} steps). To train it further pass a larger --epochs with --resume.")
