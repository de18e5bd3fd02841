"""A training run's folder: config.json, metrics.jsonl, summary.json, curves, checkpoints.

`RunWriter` is an engine callback; `read_run` loads a finished or interrupted run back.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from alexnet_lab import files
from alexnet_lab.engine import checkpoint as ckpt
from alexnet_lab.engine.trainer import Callback
from alexnet_lab.errors import UserError


PLOT_INTERVAL_S = 30.0


def default_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"


LOCK_NAME = ".lock"  # held (flock) by the process that owns the run folder, for the run's life
LOCK_TAG = "alexnet-lab run lock, PID"


class RunDirInUse(UserError):
    pass


class RunDirLock:
    """An advisory lock on a run folder: `.lock` naming the owner's PID, flock'ed while the run lives.

    The kernel drops a flock when its process dies (even on SIGKILL), so a lock file left by a dead
    process never blocks. A second process gets a `RunDirInUse` error naming the holder's PID. The file
    is opened without following links, and a `.lock` that is not alexnet-lab's (a link, a folder, a
    user's own file) is refused untouched: never truncated, never deleted.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunDirLock":
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise RunDirInUse(f"'{self.path.parent}' is in use by another alexnet-lab process (PID "
                                  f"{holder}): a run folder belongs to one process at a time. Wait for "
                                  "that run to end (or stop it), or use another folder.") from None
            # The holder may have released and unlinked the file between our open and flock: then we
            # locked a file no one else sees, so try again with the current one.
            try:
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)  # only ever a lock file of ours (_open refuses any other)
        os.write(fd, f"{LOCK_TAG} {os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _open(self) -> int:
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pass
        try:
            fd = os.open(self.path, flags | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:  # its holder removed it meanwhile
            return self._open()
        except OSError as exc:  # ELOOP: a symlink; EISDIR: a folder
            raise UserError(f"'{self.path}' is not alexnet-lab's lock file ({exc.strerror}), so "
                            f"'{self.path.parent}' is not a run folder this command may use. Remove it, "
                            "or choose another folder.") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not self._is_ours(fd):
            os.close(fd)
            raise UserError(f"'{self.path}' is not alexnet-lab's lock file (it holds something else), so "
                            f"'{self.path.parent}' is not a run folder this command may use. Move that "
                            "file away, or choose another folder.")
        return fd

    @staticmethod
    def _read(fd: int) -> str:
        try:
            return os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _is_ours(self, fd: int) -> bool:
        """Empty (a lock made and not yet written), ours, or a bare PID (older versions wrote that)."""
        text = self._read(fd)
        return text == "" or text.startswith(LOCK_TAG) or text.isdigit()

    def _holder(self, fd: int) -> str:
        return self._read(fd).removeprefix(LOCK_TAG).strip() or "unknown"

    def release(self) -> None:
        if self.fd is not None:
            try:  # unlink first, then unlock (see acquire); only the file we hold, never a newcomer
                if os.fstat(self.fd).st_ino == os.lstat(self.path).st_ino:
                    self.path.unlink()
            except OSError:
                pass
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
        raise UserError(f"Cannot write to {flag} '{path}': {exc.strerror}. "
                        f"{files.advice(exc, 'folder')}.") from None
    try:
        if not resume:
            _check_new_run_dir(path)
        files.remove_stale_temps(path)  # temp files of a save that a hard kill cut short
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


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """`make_output_dir`'s checks without making anything, for a command that checks before it writes:
    a path that is, or lies under, a file is a UserError."""
    if not str(path).strip():  # before Path(): Path("") is "."
        raise UserError(f"{flag} is empty. Pass a folder name.")
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if os.path.lexists(p))  # ends at "." or "/"
    if not existing.is_dir():
        reason = "a file of that name exists" if existing == path else f"'{existing}' is a file"
        raise UserError(f"Cannot use {flag} '{path}' as a folder: {reason}. Choose a writable folder.")
    return path


def make_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create a folder for a command's output files; a path that cannot be one is a UserError."""
    path = check_output_dir(path, flag)
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


def json_line(row: dict) -> str:
    return json.dumps({k: _clean(v) for k, v in row.items()}) + "\n"


# metrics.csv: the same rows as metrics.jsonl for a spreadsheet, pandas or timm's summary.csv habit.
# A fixed header (a resumed run appends under it); a value a row lacks is an empty cell.
CSV_COLUMNS = ("epoch", "step", "examples", "train_loss", "train_acc", "test_acc", "lr", "elapsed_s")


def csv_line(row: dict) -> str:
    cells = []
    for key in CSV_COLUMNS:
        value = _clean(row.get(key))
        cells.append("" if value is None else repr(value) if isinstance(value, float) else str(value))
    return ",".join(cells) + "\n"


def write_json(path: Path, data: dict) -> None:
    files.write_text(path, json.dumps({k: _clean(v) for k, v in data.items()}, indent=2) + "\n")


def environment() -> dict:
    """Where a run ran (versions, machine), recorded in config.json for the report."""
    import platform

    import torch

    env = {"python": platform.python_version(), "torch": str(torch.__version__), "platform": platform.platform(),
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return env


# What RunWriter writes besides the checkpoints (a run stopped before its first checkpoint may remove them).
RUN_FILES = ("metrics.jsonl", "metrics.csv", "config.json", "summary.json", "curves.svg", "curves.png",
             "val_files.txt")

def file_list(names: list[str]) -> bytes:
    """File names one a line, as the file system spells them (an undecodable byte as it was); a line
    break inside a name, the one thing a line cannot hold, written as \\n or \\r."""
    lines = (name.replace("\n", "\\n").replace("\r", "\\r") + "\n" for name in names)
    return "".join(lines).encode("utf-8", "surrogateescape")


DrawCurves = Callable[[list, list, str], None]  # (runs [(name, rows)], paths, title): reports.plots.plot_curves


class RunWriter(Callback):
    """Writes the run folder as training goes (only on the process that owns the files).

    `draw_curves` (e.g. reports.plots.plot_curves) draws curves.svg/png; without it no figure is drawn:
    the engine does not depend on the reports layer. `val_files` (an image folder's `Splits.test_files`)
    is written to val_files.txt, one file a line, so that a user can pick a held-out image to predict."""

    def __init__(self, out: Path, config: dict, *, rows: list[dict] | None = None,
                 draw_curves: DrawCurves | None = None, val_files: list[str] | None = None):
        """`rows`: the metrics held by the checkpoint a run resumes from. metrics.jsonl is rewritten
        to exactly those, dropping rows logged after that checkpoint (those steps run again).
        Without `rows` the run is new and metrics.jsonl starts empty. Nothing is written before
        `on_train_start`, which comes after every check of `fit` (a refused resume changes no file)."""
        self.out = Path(out)
        self.config = config
        self.resumed = rows is not None
        self.rows = list(rows or [])
        self.draw_curves = draw_curves
        self.val_files = val_files
        self.info: dict = {}
        self.last_plot = -float("inf")

    def on_train_start(self, info: dict) -> None:
        self.info = info
        files.write_text(self.out / "metrics.jsonl", "".join(json_line(r) for r in self.rows))
        files.write_text(self.out / "metrics.csv", ",".join(CSV_COLUMNS) + "\n" + "".join(map(csv_line, self.rows)))
        summary = self.out / "summary.json"
        if self.resumed and summary.is_file() and not files.is_symlink(summary):
            summary.unlink()  # the run is unfinished again (summary.json is this run's own file)
        write_json(self.out / "config.json", {**self.config, "resolved": {**info, "environment": environment()}})
        if self.val_files is not None:
            files.write_bytes(self.out / "val_files.txt", file_list(self.val_files))

    def on_log(self, row: dict) -> None:
        self.rows.append(row)
        files.append_text(self.out / "metrics.jsonl", json_line(row))
        files.append_text(self.out / "metrics.csv", csv_line(row))
        # Redraw at epoch ends, at most every PLOT_INTERVAL_S (saving both figures costs ~0.5 s),
        # and never inside timed target-accuracy runs; on_train_end always draws the final figure.
        at_epoch_end = abs(row["epoch"] - round(row["epoch"])) < 1e-9
        due = time.monotonic() - self.last_plot >= PLOT_INTERVAL_S
        if at_epoch_end and due and self.config.get("target_accuracy") is None:
            self.plot()

    def plot(self) -> None:
        self.last_plot = time.monotonic()
        if self.draw_curves is None:
            return
        title = f"{self.config.get('model')} ({self.config.get('preset')}), {self.info.get('device', '')}"
        self.draw_curves([(self.config.get("model", ""), self.rows)],
                         [self.out / "curves.svg", self.out / "curves.png"], title)

    def on_checkpoint(self, payload: dict, is_best: bool) -> None:
        ckpt.save_checkpoint(self.out / "checkpoint.pt", payload)
        if is_best:
            ckpt.save_checkpoint(self.out / "best.pt", payload)

    def on_train_end(self, summary: dict) -> None:
        write_json(self.out / "summary.json", summary)
        self.plot()


def read_metrics(out: Path) -> list[dict]:
    """The rows of metrics.jsonl, each checked (engine/schema.py); a line that is not a JSON object with
    the row's fields is a UserError naming the file and the line. Only the last line may be torn (a kill
    while appending): it is left out."""
    from alexnet_lab.engine.schema import check_metrics_row

    path = Path(out) / "metrics.jsonl"
    if not os.path.lexists(path):
        return []
    lines = [(number, line) for number, line in enumerate(_read_bytes(path).split(b"\n"), 1) if line.strip()]
    rows = []
    for i, (number, line) in enumerate(lines):
        try:  # the writer writes ASCII (json.dumps escapes the rest): other bytes are damage
            row = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # ValueError: JSONDecodeError, UnicodeDecodeError, > 4,300 digits
            if i < len(lines) - 1:
                raise UserError(f"'{path}' is corrupt at line {number} (not UTF-8 JSON). Delete the line, or "
                                "leave this run out.") from None
            continue
        rows.append(check_metrics_row(row, path, number))
    return rows


def read_run(out: str | os.PathLike) -> dict:
    """config, summary (if finished) and metrics of a run folder, every field the report and compare
    read checked first (engine/schema.py)."""
    from alexnet_lab.engine.schema import check_run_config, check_summary

    out = Path(out)
    if not (out / "config.json").is_file():
        raise UserError(f"'{out}' is not a run folder (no config.json). Pass a folder made by 'alexnet-lab train'.")
    summary_path = out / "summary.json"
    return {"path": str(out), "config": check_run_config(_read_json_object(out / "config.json"), out / "config.json"),
            "summary": check_summary(_read_json_object(summary_path), summary_path)
            if os.path.lexists(summary_path) else None,
            "metrics": read_metrics(out)}


def _read_bytes(path: Path) -> bytes:
    """A run file's bytes; only a regular file is read (a FIFO would block for ever)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UserError(f"'{path}' is not a regular file. Restore it, or leave this run out.")
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"'{path}' is unreadable ({exc.strerror}). Restore it, or leave this run out.") from None


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(_read_bytes(path).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError, ...
        raise UserError(f"'{path}' is unreadable or not valid JSON ({str(exc).splitlines()[0][:120]}). Restore "
                        "it, or leave this run out.") from None
    if not isinstance(value, dict):
        raise UserError(f"'{path}' holds a JSON {type(value).__name__}, not the object alexnet-lab writes. "
                        "Restore it, or leave this run out.")
    return value
