"""TensorBoard event files in RUN_DIR/tensorboard/: the curves as training goes, and at the end the
confusion matrix and first-layer filters of the run's final test and the config as hparams
(`tensorboard --logdir runs/`).

This is the one writer that does not go through files.py: an event file is an append-only stream that
TensorBoard reads while it grows (a run is watched live), written by tensorboard's own writer, so
there is no complete file to rename into place. What it keeps of files.py's rules: the folder is
created here (os.mkdir, honouring the umask) and never used through a symlink; each event file has a
new name (time, host, PID, counter), so nothing that was there is overwritten; and a run stopped
before its first checkpoint takes back exactly the files it made (`discard`).
"""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from alexnet_lab.analysis.features import first_layer_filters
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.trainer import Callback
from alexnet_lab.errors import UserError, printable
from alexnet_lab.reports.plots import plot_confusion, plot_filters

FOLDER = "tensorboard"
FLUSH_S = 10  # events reach the file at least this often, for a TensorBoard that watches the run live
SCALARS = ("train_loss", "train_acc", "test_acc", "lr")  # the metrics.jsonl columns, under the same names
HPARAM_METRICS = ("test_acc", "train_acc", "train_loss")  # their last values: the run's final results


def unavailable() -> str | None:
    """None when torch.utils.tensorboard can write events here; else why not, in a few words."""
    try:
        import tensorboard  # noqa: F401  (checked first: a cached torch.utils.tensorboard would hide its absence)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        return str(exc) or "the tensorboard package is not installed"
    except Exception as exc:  # noqa: BLE001  (a broken install, e.g. a protobuf it cannot use)
        return f"{type(exc).__name__}: {exc}"
    return None


def check_folder(out: Path) -> Path:
    """RUN_DIR/tensorboard is missing (made when training starts) or a folder; a link or a file of that
    name is refused (TensorBoard's writer would follow it), before the run writes anything."""
    folder = Path(out) / FOLDER
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        return folder
    except OSError as exc:
        raise UserError(f"Cannot use '{folder}' for the TensorBoard events: {exc.strerror}. Choose another "
                        "--out, or run with --no-tensorboard.") from None
    if not stat.S_ISDIR(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
        raise UserError(f"'{folder}' is {kind}, and alexnet-lab writes TensorBoard events only into a "
                        "folder of its own. Move it away, or run with --no-tensorboard.")
    return folder


def make_folder(out: Path) -> Path:
    """RUN_DIR/tensorboard, made here unless a resumed run made it before (checked again: the folder
    may have changed since `check_folder`)."""
    folder = Path(out) / FOLDER
    try:
        os.mkdir(folder)
        return folder
    except FileExistsError:
        return check_folder(out)
    except OSError as exc:
        raise UserError(f"Cannot create '{folder}' for the TensorBoard events: {exc.strerror}. Choose "
                        "another --out, or run with --no-tensorboard.") from None


def hparam_value(value):
    """A config value as the hparams plugin takes it: numbers and text as they are, a switch as
    'True'/'False' (torch would store it as 1.0/0.0), None left out (an unset field), anything else as text."""
    if isinstance(value, str):
        return printable(value)  # protobuf holds UTF-8 only: a folder's undecodable bytes as \xNN
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    return printable(str(value))


class TensorBoardLogger(Callback):
    """Writes the run's events on the process that owns the run folder (callbacks of engine.run.train).

    Scalars at every logged point, x axis = step: train_loss, train_acc, test_acc (where evaluated), lr
    and examples_per_s. At the end, from the run's final test pass (no test of its own): the confusion
    matrix and the first-layer filters of the weights it tested, as images."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.config: TrainConfig | None = None
        self.class_names: tuple[str, ...] = ()
        self.last = (0, 0.0)  # (examples, elapsed_s) at the previous logged point
        self.writer = None
        self.folder = self.out / FOLDER
        self.found: set[str] | None = None  # what the folder held before this process (None: not started)
        self.made_folder = False
        self.test: dict | None = None  # the last test pass (`on_test`)
        self.note: str | None = None  # why the end-of-run images are missing, for the console

    def on_prepared(self, run) -> None:
        """The run's config; a resumed run's curves continue at its checkpoint's examples and wall clock.
        The folder is refused now, before the run folder is written (not at the first step)."""
        self.config, self.class_names = run.config, run.splits.class_names
        state = run.resumed["run_state"] if run.resumed is not None else {}
        self.last = (state.get("examples", 0), state.get("wall_seconds", 0.0))
        check_folder(self.out)

    def on_train_start(self, info: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # Noted first: a second Ctrl-C may come anywhere, and `discard` must know what was there.
        self.made_folder = not os.path.lexists(self.folder)
        real_folder = os.path.isdir(self.folder) and not os.path.islink(self.folder)
        self.found = set(os.listdir(self.folder)) if real_folder else set()
        make_folder(self.out)
        # A resumed run trains the steps after its checkpoint again: purge_step makes TensorBoard drop
        # the events an earlier process logged from that step on, so no curve doubles back.
        start = info.get("start_step", 0)
        self.writer = SummaryWriter(str(self.folder), flush_secs=FLUSH_S, purge_step=start + 1 if start else None)
        config = {key: hparam_value(value) for key, value in self.config.to_dict().items()}
        experiment, session_start, self.session_end = hparams(config, dict.fromkeys(HPARAM_METRICS, 0.0))
        # The metrics' values are the scalars of the same tags (their last points), so a run in
        # progress already has its row in the HParams table; the end of the session comes at the end.
        self.writer.file_writer.add_summary(experiment, start)
        self.writer.file_writer.add_summary(session_start, start)

    def on_log(self, row: dict) -> None:
        step = row["step"]
        for key in SCALARS:
            if row.get(key) is not None and math.isfinite(row[key]):
                self.writer.add_scalar(key, row[key], step)
        # examples/s: training examples over the wall-clock seconds since the previous logged point
        # (evaluation included, as in the progress lines), so a slow stretch shows where it happened.
        examples, seconds = self.last
        if row["elapsed_s"] > seconds:
            self.writer.add_scalar("examples_per_s", (row["examples"] - examples) / (row["elapsed_s"] - seconds), step)
        self.last = (row["examples"], row["elapsed_s"])

    def on_test(self, result: dict) -> None:
        self.test = result

    def on_train_end(self, summary: dict) -> None:
        try:
            for tag, image in self.final_images(summary["steps"]).items():
                self.writer.add_image(tag, image, summary["steps"], dataformats="HWC")
        except (UserError, OSError, RuntimeError, ValueError) as exc:  # RuntimeError: e.g. out of memory
            self.note = f"TensorBoard images not written ({type(exc).__name__}: {exc})"
        self.writer.file_writer.add_summary(self.session_end, summary["steps"])
        self.writer.flush()

    def final_images(self, step: int) -> dict:
        """{tag: (H, W, 3) uint8}: the confusion matrix of the final test pass (after the last step) and the
        first-layer filters of the weights it tested, drawn by the report's own functions (reports/plots.py)."""
        if self.test is None or self.test["step"] != step:
            raise UserError("this process ran no test after the last step")
        confusion, model, name = self.test["confusion"], self.test["model"], self.config.model
        images = {"confusion_matrix": _rendered(lambda target: plot_confusion(
            confusion, self.class_names, target,
            title=f"{name}, final weights (step {step}): {int(confusion.sum()):,} test images"))}
        filters = first_layer_filters(model)
        title = f"{len(filters)} first-layer filters of {name}, {filters.shape[1]}x{filters.shape[1]}"
        images["first_layer_filters"] = _rendered(lambda target: plot_filters(filters.numpy(), [target], title=title))
        return images

    def on_exit(self, taken_back: bool) -> None:
        """The writer is closed however the run ends; a run stopped before its first checkpoint takes its
        event files back, as engine.run takes back the run's other files then."""
        if taken_back:
            self.discard()
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def discard(self) -> None:
        """Close, and remove the event files this process made (and the folder, if made here and now
        empty): a run stopped before its first checkpoint leaves no trace. The run folder is locked by
        this process, so an event file that was not there when it started is its own."""
        self.close()
        if self.found is None or not os.path.isdir(self.folder) or os.path.islink(self.folder):
            return
        for name in set(os.listdir(self.folder)) - self.found:
            if name.startswith("events.out.tfevents."):
                (self.folder / name).unlink(missing_ok=True)
        if self.made_folder:
            try:
                self.folder.rmdir()
            except OSError:  # something else was put into it: it stays
                pass


def _rendered(draw) -> np.ndarray:
    """Run `draw(target)` (a plots.py function) into an in-memory PNG; return its pixels (H, W, 3) uint8."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"savefig.format": "png"}):
        draw(buffer)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB"))
