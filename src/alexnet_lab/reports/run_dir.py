"""A training run's folder: config.json, metrics.jsonl, summary.json, curves, checkpoints.

`RunWriter` is an engine callback; `read_run` loads a finished or interrupted run back.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from alexnet_lab.engine import checkpoint as ckpt
from alexnet_lab.engine.trainer import Callback
from alexnet_lab.errors import UserError
from alexnet_lab.reports.plots import plot_curves


PLOT_INTERVAL_S = 30.0


def default_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"


LOCK_NAME = ".lock"  # held (flock) by the process that owns the run folder, for the run's life


class RunDirInUse(UserError):
    pass


class RunDirLock:
    """An advisory lock on a run folder: `.lock` holding the owner's PID, flock'ed while the run lives.

    The kernel drops a flock when its process dies (even on SIGKILL), so a lock file left by a dead
    process never blocks. A second process gets a `RunDirInUse` error naming the holder's PID.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunDirLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirInUse(f"'{self.path.parent}' is in use by another alexnet-lab process (PID "
                                  f"{self._holder()}): a run folder belongs to one process at a time. Wait for "
                                  "that run to end (or stop it), or use another folder.") from None
            # The holder may have released and unlinked the file between our open and flock: then we
            # locked a file no one else sees, so try again with the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # unlink first, then unlock (see acquire)
            os.close(self.fd)
            self.fd = None


@contextmanager
def claim_run_dir(path: str | os.PathLike, *, resume: bool = False, flag: str = "--out"):
    """`with claim_run_dir(out) as out:` creates the run folder (or checks it is writable), locks it
    for the life of the block and checks that it is this run's own: a new run needs a new or empty
    folder; a resumed one its own folder. Temp files of a save cut short by a hard kill are removed."""
    if not str(path).strip():  # before Path(): Path("") is "."
        raise UserError(f"{flag} is empty. Pass a folder name, or leave --out out for runs/<timestamp>-<model>.")
    path = Path(path)
    lock = RunDirLock(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as exc:
        raise UserError(f"Cannot write to {flag} '{path}': {exc.strerror}. Choose a writable folder.") from None
    try:
        if not resume:
            _check_new_run_dir(path)
        for stale in path.glob(".*.pt.*.tmp"):  # temp files of a save that a hard kill cut short
            stale.unlink(missing_ok=True)
        yield path
    finally:
        lock.release()


def _check_new_run_dir(path: Path) -> None:
    if (path / "checkpoint.pt").exists():
        raise UserError(f"'{path}' already holds a run. Use --resume {path} to continue it, "
                        "or choose another --out.")
    held = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise UserError(f"'{path}' is not empty (it holds {shown}) and has no checkpoint.pt to resume, so it is "
                        "not a run this command may continue or overwrite. Choose a new or empty --out, "
                        "or move those files away first.")


def make_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create a folder for a command's output files; a path that cannot be one is a UserError."""
    if not str(path).strip():  # before Path(): Path("") is "."
        raise UserError(f"{flag} is empty. Pass a folder name.")
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a file of that name exists" if isinstance(exc, FileExistsError) else exc.strerror
        raise UserError(f"Cannot use {flag} '{path}' as a folder: {reason}. Choose a writable folder.") from None
    return path


def prepare_run_dir(path: str | os.PathLike, *, resume: bool = False) -> Path:
    """Create the run folder and check it as `claim_run_dir` does, without holding it afterwards."""
    with claim_run_dir(path, resume=resume) as path:
        return path


def _clean(value):
    """JSON has no NaN/inf: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@contextmanager
def naming_errors(path: Path, tmp: Path | None = None):
    """An OSError inside (a full disk reports no file name) names `path`; `tmp` is removed."""
    try:
        yield
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with naming_errors(path, tmp):
        tmp.write_text(json.dumps({k: _clean(v) for k, v in data.items()}, indent=2) + "\n")
        os.replace(tmp, path)


def environment() -> dict:
    """Where a run ran (versions, machine), recorded in config.json for the report."""
    import platform

    import torch

    env = {"python": platform.python_version(), "torch": str(torch.__version__), "platform": platform.platform(),
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return env


class RunWriter(Callback):
    """Writes the run folder as training goes (only on the process that owns the files)."""

    def __init__(self, out: Path, config: dict, *, rows: list[dict] | None = None):
        """`rows`: the metrics held by the checkpoint a run resumes from. metrics.jsonl is rewritten
        to exactly those, dropping rows logged after that checkpoint (those steps run again).
        Without `rows` the run is new and metrics.jsonl starts empty."""
        self.out = out
        self.config = config
        self.rows = list(rows or [])
        tmp = out / ".metrics.jsonl.tmp"
        with naming_errors(out / "metrics.jsonl", tmp):
            tmp.write_text("".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n" for r in self.rows))
            os.replace(tmp, out / "metrics.jsonl")
        if rows is not None:
            (out / "summary.json").unlink(missing_ok=True)  # the run is unfinished again
        self.info: dict = {}
        self.last_plot = -float("inf")

    def on_train_start(self, info: dict) -> None:
        self.info = info
        write_json(self.out / "config.json", {**self.config, "resolved": {**info, "environment": environment()}})

    def on_log(self, row: dict) -> None:
        self.rows.append(row)
        with naming_errors(self.out / "metrics.jsonl"), open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        # Redraw at epoch ends, at most every PLOT_INTERVAL_S (saving both figures costs ~0.5 s),
        # and never inside timed target-accuracy runs; on_train_end always draws the final figure.
        at_epoch_end = abs(row["epoch"] - round(row["epoch"])) < 1e-9
        due = time.monotonic() - self.last_plot >= PLOT_INTERVAL_S
        if at_epoch_end and due and self.config.get("target_accuracy") is None:
            self.plot()

    def plot(self) -> None:
        self.last_plot = time.monotonic()
        title = f"{self.config.get('model')} ({self.config.get('preset')}), {self.info.get('device', '')}"
        plot_curves([(self.config.get("model", ""), self.rows)],
                    [self.out / "curves.svg", self.out / "curves.png"], title)

    def on_checkpoint(self, payload: dict, is_best: bool) -> None:
        ckpt.save_checkpoint(self.out / "checkpoint.pt", payload)
        if is_best:
            ckpt.save_checkpoint(self.out / "best.pt", payload)

    def on_train_end(self, summary: dict) -> None:
        write_json(self.out / "summary.json", summary)
        self.plot()


def read_metrics(out: Path) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # only the last line may be torn (a kill while appending)
                raise UserError(f"'{path}' is corrupt at line {i + 1}. Delete the line or the run.") from None
    return rows


def read_run(out: str | os.PathLike) -> dict:
    """config, summary (if finished) and metrics of a run folder."""
    out = Path(out)
    if not (out / "config.json").is_file():
        raise UserError(f"'{out}' is not a run folder (no config.json). Pass a folder made by 'alexnet-lab train'.")
    summary_path = out / "summary.json"
    return {"path": str(out), "config": _read_json_object(out / "config.json"),
            "summary": _read_json_object(summary_path) if summary_path.exists() else None,
            "metrics": read_metrics(out)}


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"'{path}' is unreadable or not valid JSON ({exc}). Restore it, or leave this run "
                        "out.") from None
    if not isinstance(value, dict):
        raise UserError(f"'{path}' holds a JSON {type(value).__name__}, not the object alexnet-lab writes. "
                        "Restore it, or leave this run out.")
    return value
