"""A training run's folder: config.json, metrics.jsonl, summary.json, curves, checkpoints.

`RunWriter` is an engine callback; `read_run` loads a finished or interrupted run back.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from alexnet_lab.engine import checkpoint as ckpt
from alexnet_lab.engine.trainer import Callback
from alexnet_lab.errors import UserError
from alexnet_lab.reports.plots import plot_curves


PLOT_INTERVAL_S = 30.0


def default_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"


def prepare_run_dir(path: str | os.PathLike, *, resume: bool = False) -> Path:
    """Create the run folder (or check it is writable) before any training starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"Cannot write to --out '{path}': {exc.strerror}. Choose a writable folder.") from None
    if not resume and (path / "checkpoint.pt").exists():
        raise UserError(f"'{path}' already holds a run. Use --resume {path} to continue it, "
                        "or choose another --out.")
    for stale in path.glob(".*.pt.*.tmp"):  # temp files of a save that a hard kill cut short
        stale.unlink(missing_ok=True)
    return path


def _clean(value):
    """JSON has no NaN/inf: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
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
        with open(self.out / "metrics.jsonl", "a") as fh:
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
    return {"path": str(out), "config": json.loads((out / "config.json").read_text()),
            "summary": json.loads(summary_path.read_text()) if summary_path.exists() else None,
            "metrics": read_metrics(out)}
