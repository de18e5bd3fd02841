"""A training run's folder: config.json, metrics.jsonl, summary.json, predictions.csv, curves, checkpoints.

`RunWriter` is an engine callback; `read_run` loads a finished or interrupted run back.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from alexnet_lab import files
from alexnet_lab.engine import checkpoint as ckpt
from alexnet_lab.engine.evaluation import run_test_record
from alexnet_lab.engine.trainer import Callback
from alexnet_lab.errors import UserError, printable


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
PREDICTIONS = "predictions.csv"  # the final test pass, image by image (and `evaluate --predictions`'s format)
PREDICTIONS_HEADERS = tuple(f"{first},true,predicted,confidence\n".encode() for first in ("path", "index"))


def predictions_csv(result: dict, class_names, test_files: list[str] | None = None) -> bytes:
    """A test pass (evaluation.evaluate's dict) as CSV, one row per test image in the test set's order:
    its file relative to the image folder (`test_files`) or its index, true class, predicted class,
    confidence (the softmax probability of the predicted class, TTA included), 4 decimals. Names are
    shown as everywhere (undecodable bytes and control characters escaped), and a cell a spreadsheet
    would take for a formula begins with '."""
    shown = [files.csv_cell(printable(name)) for name in class_names]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path" if test_files is not None else "index", "true", "predicted", "confidence"])
    for i, (true, predicted, p) in enumerate(zip(result["labels"].tolist(), result["predicted"].tolist(),
                                                 result["confidence"].tolist())):
        where = files.csv_cell(printable(test_files[i])) if test_files is not None else i
        writer.writerow([where, shown[true], shown[predicted], f"{p:.4f}"])
    return text.getvalue().encode("utf-8")


def read_predictions(out: Path, class_names) -> dict | None:
    """A run's predictions.csv (None if it has none) as `labels`, `predicted` (int64) and `confidence`
    (float64) tensors and each row's `where` (path or index), every row checked: a cell that is not
    what `predictions_csv` writes is a UserError naming the file and the line."""
    path = Path(out) / PREDICTIONS
    if not os.path.lexists(path):
        return None
    shown = {files.csv_cell(printable(name)): i for i, name in enumerate(class_names)}
    rows = list(csv.reader(io.StringIO(_read_bytes(path).decode("utf-8", "replace"))))
    if len(shown) < len(class_names) or not rows or ",".join(rows[0]).encode() + b"\n" not in PREDICTIONS_HEADERS:
        raise UserError(f"'{path}' is not the predictions file alexnet-lab writes (its header, or class names "
                        "it cannot tell apart). Restore it, or leave this run out.")
    columns: list[list] = [[], [], [], []]
    for line, row in enumerate(rows[1:], 2):
        try:
            where, true, predicted, confidence = row
            values = (int(where) if rows[0][0] == "index" else where, shown[true], shown[predicted], float(confidence))
            if not 0 <= values[3] <= 1 or (rows[0][0] == "index" and values[0] != line - 2):
                raise ValueError
        except (ValueError, KeyError):
            raise UserError(f"'{path}' line {line} is not a prediction row (path or index, true class, predicted "
                            "class, confidence in [0, 1]). Restore it, or leave this run out.") from None
        for column, value in zip(columns, values):
            column.append(value)
    return {"where": columns[0], "labels": torch.tensor(columns[1], dtype=torch.int64),
            "predicted": torch.tensor(columns[2], dtype=torch.int64),
            "confidence": torch.tensor(columns[3], dtype=torch.float64)}


def file_list(names: list[str]) -> bytes:
    """File names one a line, as the file system spells them (an undecodable byte as it was); a line
    break inside a name, the one thing a line cannot hold, written as \\n or \\r."""
    lines = (name.replace("\n", "\\n").replace("\r", "\\r") + "\n" for name in names)
    return "".join(lines).encode("utf-8", "surrogateescape")


DrawCurves = Callable[[list, list, str], None]  # (runs [(name, rows)], paths, title): reports.plots.plot_curves


class RunWriter(Callback):
    """Writes the run folder as training goes (only on the process that owns the files): checkpoint.pt at
    every save, best.pt (`checkpoint.for_predicting`: weights and descriptions, no optimizer state) at a
    new best before the run's last state, and at the end summary.json and predictions.csv, the final test
    pass image by image, which the report and TensorBoard show instead of testing again.

    `draw_curves` (e.g. reports.plots.plot_curves) draws curves.svg/png; without it no figure is drawn:
    the engine does not depend on the reports layer. `val_files` (an image folder's `Splits.test_files`)
    is written to val_files.txt, one file a line, so that a user can pick a held-out image to predict,
    and names predictions.csv's rows."""

    def __init__(self, out: Path, config: dict, *, resumed: dict | None = None,
                 draw_curves: DrawCurves | None = None, val_files: list[str] | None = None):
        """`resumed`: the checkpoint payload a run resumes from. metrics.jsonl is rewritten to exactly
        its metrics, dropping rows logged after that checkpoint (those steps run again). Without it the
        run is new and metrics.jsonl starts empty. Nothing is written before `on_train_start`, which
        comes after every check of `fit` (a refused resume changes no file)."""
        self.out = Path(out)
        self.config = config
        self.resumed = resumed
        self.rows = list(resumed["run_state"]["metrics"]) if resumed is not None else []
        self.draw_curves = draw_curves
        self.val_files = val_files
        self.info: dict = {}
        self.last_plot = -float("inf")
        self.test: dict | None = None  # the last test pass (`on_test`)
        self.class_names: list[str] = []  # the model's, from its checkpoints

    def on_train_start(self, info: dict) -> None:
        self.info = info
        files.write_text(self.out / "metrics.jsonl", "".join(json_line(r) for r in self.rows))
        files.write_text(self.out / "metrics.csv", ",".join(CSV_COLUMNS) + "\n" + "".join(map(csv_line, self.rows)))
        if self.resumed is not None:
            for name in ("summary.json", PREDICTIONS):  # the run is unfinished again (these are this run's own files)
                _remove_own(self.out / name)
            self.keep_best(self.resumed)
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

    def keep_best(self, payload: dict) -> None:
        """A run whose best test was its last state kept no best.pt (checkpoint.pt held the best): before
        it trains further, which rewrites checkpoint.pt, the best weights go to best.pt."""
        record = run_test_record(payload)
        if record is not None and record["test_acc"] == payload["run_state"].get("best_test_acc") \
                and not os.path.lexists(self.out / "best.pt"):
            ckpt.save_checkpoint(self.out / "best.pt", ckpt.for_predicting(payload))

    def on_test(self, result: dict) -> None:
        self.test = result

    def on_checkpoint(self, payload: dict, is_best: bool) -> None:
        self.class_names = payload["class_names"]
        ckpt.save_checkpoint(self.out / "checkpoint.pt", payload)
        if is_best:
            ckpt.save_checkpoint(self.out / "best.pt", ckpt.for_predicting(payload))

    def on_train_end(self, summary: dict) -> None:
        final = self.test is not None and self.test["step"] == summary["steps"]  # tested after the last step
        if final:
            files.write_bytes(self.out / PREDICTIONS, predictions_csv(self.test, self.class_names, self.val_files))
        best_is_last = summary["best_step"] is not None and summary["best_step"] == summary["steps"]
        if best_is_last:
            _remove_own(self.out / "best.pt")  # an earlier, lower best: checkpoint.pt holds the best
        write_json(self.out / "summary.json", {**summary, "predictions": PREDICTIONS if final else None,
                                               "best_weights": "checkpoint.pt" if best_is_last else
                                               "best.pt" if summary["best_step"] is not None else None})
        self.plot()


def _remove_own(path: Path) -> None:
    """Remove a run file this run wrote and now replaces; a link or anything but a file is left alone."""
    if path.is_file() and not files.is_symlink(path):
        path.unlink()


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
