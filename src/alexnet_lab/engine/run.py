"""A training run's life as plain functions over a TrainConfig: load its data, claim a new folder or
check a resume (every resume rule), fit into the folder. No argparse and no printing: the CLI parses,
calls these, and says what happened (cli/train.py, cli/chapter.py, cli/running.py)."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

from alexnet_lab.engine import distributed
from alexnet_lab.engine.builders import Splits, splits_for
from alexnet_lab.engine.checkpoint import check_same_data, load_checkpoint
from alexnet_lab.engine.config import TrainConfig, flag_name
from alexnet_lab.engine.preflight import preflight
from alexnet_lab.engine.run_dir import RUN_FILES, DrawCurves, RunWriter, claim_run_dir
from alexnet_lab.engine.schema import check_checkpoint
from alexnet_lab.engine.trainer import Callback, fit
from alexnet_lab.errors import UserError

RESUME_ADVICE = ("--resume reads only the run's checkpoint.pt: to continue from its best.pt instead, copy "
                 "best.pt over checkpoint.pt (the steps after it are trained again), or start a new run with --out.")


# --- data ------------------------------------------------------------------------------------------

def load_data(config: TrainConfig, env: distributed.DistEnv = distributed.DistEnv()) -> Splits:
    """The run's data (the one door, `splits_for`), read by one process per machine at a time (at
    most one download), after the checks that need no data; then the checks that do."""
    preflight(config)
    splits = distributed.in_turn(env, lambda: splits_for(config))
    preflight(config, len(splits.train_images), env.world_size)
    return splits


# --- a new run ---------------------------------------------------------------------------------------

def claim_new_run(held: ExitStack, out_dir: str | os.PathLike, undo_on: tuple[type, ...] = ()) -> Path:
    """`claim_run_dir(out_dir)` for a new run, held until `held` closes, and undone if an exception of
    a type in `undo_on` (a stop on a signal) leaves before the first checkpoint: the run files this
    process wrote are removed, then the folders it made (the run folder, and parents `mkdir -p`
    made), each only if empty. Nothing that was there before is touched."""
    made = _missing_folders(Path(out_dir))

    def stopped_early(exc, folder: Path) -> bool:
        return isinstance(exc, undo_on) and not os.path.lexists(folder / "checkpoint.pt")

    held.push(lambda *exc: _remove_folders(made) if made and stopped_early(exc[1], made[0]) else None)
    out = held.enter_context(claim_run_dir(out_dir))  # the folder is unlocked before the push above runs
    before = set(os.listdir(out))  # a new run's folder is empty (claim_run_dir checks), or holds the lock
    held.push(lambda *exc: _remove_run_files(out, before) if stopped_early(exc[1], out) else None)
    return out


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

def resumable_flags() -> str:
    """The flags that may be given with --resume (fields declared `resumable`). Everything else is the
    run's recipe and data order, which a resumed run keeps. --epochs may only grow (to extend a run)."""
    return ", ".join(flag_name(name) for name in TrainConfig.resumable_fields())


def resume_checkpoint(run_dir: str, out: str | None = None) -> Path:
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


def read_resume(path: Path) -> tuple[dict, TrainConfig]:
    """(the checkpoint's payload, the config it was trained with), every field a resume reads checked."""
    payload = load_checkpoint(path, advice=RESUME_ADVICE)
    return payload, check_checkpoint(payload, path, for_resume=True, advice=RESUME_ADVICE)


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


def check_resume_data(payload: dict, splits: Splits, out: Path, *, allow: bool) -> bool:
    """True if the data are those the checkpoint was trained on; False if they differ and `allow`."""
    return check_same_data(payload, splits.fingerprint, out, allow=allow)


# --- training into the folder --------------------------------------------------------------------------

def fit_into(config: TrainConfig, out: Path | None, callbacks: Sequence[Callback], *, splits: Splits,
             resume: dict | None = None, env: distributed.DistEnv = distributed.DistEnv(),
             draw_curves: DrawCurves | None = None) -> dict:
    """Train `config` with the run folder `out` written as training goes (RunWriter, on the process
    that owns the files: `out` None on the other ranks); return the summary."""
    fit_kwargs = {"splits": splits, "resume": resume, **env.fit_kwargs()}
    if out is None:
        return fit(config, list(callbacks), **fit_kwargs)
    rows = resume["run_state"]["metrics"] if resume is not None else None
    writer = RunWriter(out, config.to_dict(), rows=rows, draw_curves=draw_curves, val_files=splits.test_files)
    return fit(config, [writer, *callbacks], **fit_kwargs)

