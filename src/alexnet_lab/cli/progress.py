"""What a person sees while training: the plan, the chapter's lines, and progress: a tqdm bar in a terminal, one
plain flushed line per logged point when stderr is redirected (`--progress bar|log|none` chooses)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from alexnet_lab.engine.config import TrainConfig, per_rank_batch
from alexnet_lab.engine.numerics import numerics_line
from alexnet_lab.engine.trainer import Callback


def chapter_lines(summary: dict) -> str:
    """The two lines d2l.train_ch6 prints, with this run's numbers."""
    return (f"loss {summary['train_loss']:.3f}, train acc {summary['train_acc']:.3f}, "
            f"test acc {summary['test_acc']:.3f}\n"
            f"{summary['examples_per_sec']:.1f} examples/sec on {summary['device']}")


def _processes(info: dict, config: TrainConfig) -> str:
    world_size = info.get("world_size", 1)
    return f" (global: {world_size} processes x {per_rank_batch(config, world_size)})" if world_size > 1 else ""


PROGRESS_MODES = ("auto", "bar", "log", "none")


def add_progress(parser) -> None:
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="bar: a live progress bar; log: one plain line per logged point (epoch, step, "
                             "loss, acc, examples/s, ETA); none: only the plan and the results; auto: bar "
                             "in a terminal, log when stderr is redirected")


def progress_mode(mode: str, stream) -> str:
    """auto -> bar when `stream` is a terminal, else log (no carriage returns in log files)."""
    if mode != "auto":
        return mode
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def log_line(row: dict, total_steps: int, epochs: float, examples_per_sec: float, eta_s: float | None) -> str:
    """One logged point as a plain line, e.g. for a log file."""
    parts = [f"epoch {row['epoch']:.2f}/{epochs:g}", f"step {row['step']:,}/{total_steps:,}",
             f"loss {row['train_loss']:.4f}", f"train acc {row['train_acc']:.4f}"]
    if "test_acc" in row:
        parts.append(f"test acc {row['test_acc']:.4f}")
    parts.append(f"{examples_per_sec:,.1f} examples/s")
    if eta_s is not None:
        parts.append(f"ETA {_duration(eta_s)}")
    return "  ".join(parts)


FEW_STEPS = 100  # below this a run from scratch rarely learns much: say so before it starts


def short_run_note(config, info: dict) -> str:
    """A warning for a run too short to learn much (e.g. 288 own images at batch 128: 12 steps)."""
    per_epoch = max(1, round(info["total_steps"] / max(config.epochs, 1e-9)))
    epochs_for_100 = FEW_STEPS / per_epoch
    return (f"Note: this run takes only {info['total_steps']} optimizer steps ({per_epoch} per epoch); a model "
            f"trained from scratch rarely gets far in under {FEW_STEPS}. For about {FEW_STEPS} steps use "
            f"--epochs {epochs_for_100:.3g}, or a smaller --batch-size (e.g. --batch-size "
            f"{max(1, config.batch_size // 4)}: 4x the steps per epoch).")


class ConsoleReporter(Callback):
    def __init__(self, config=None, out=None, stream=None, mode: str = "auto"):
        self.config = config  # None: the run's, when it is prepared (a resume's is read from its checkpoint)
        self.out = out
        self.stream = stream or sys.stderr  # looked up now, not at import (tests swap sys.stderr)
        self.mode = progress_mode(mode, self.stream)
        self.bar = None
        self.start = None  # (time, step, examples) when this process started (a resumed run: its first step)

    def on_prepared(self, run) -> None:
        self.config = run.config

    def on_train_start(self, info: dict) -> None:
        c = self.config
        size = info["input_size"]
        print(f"Training {c.model} ({info['params']:,} parameters), preset '{c.preset}', on {info['device']} "
              f"in {info['precision']}: {info['train_examples']:,} train / {info['test_examples']:,} test "
              f"images at {size}x{size}, batch {c.batch_size}{_processes(info, c)}, lr {c.lr}, "
              f"{c.epochs:g} epoch(s) = "
              f"{info['total_steps']:,} steps.", file=self.stream)
        print(f"Data: {info['data_source']}" + (f"   Output: {self.out}" if self.out else ""), file=self.stream)
        numerics = numerics_line(info.get("numerics"))  # how --precision auto and channels-last were chosen
        if numerics:
            print(numerics, file=self.stream)
        # (a run on a clock cannot take more steps: the advice is for runs planned by epochs)
        if info["total_steps"] < FEW_STEPS and info.get("start_step", 0) == 0 and c.time_budget_s is None:
            print(short_run_note(c, info), file=self.stream)
        self.info = info
        self.start = (time.perf_counter(), info["start_step"], info.get("start_examples", 0))  # the loop starts next
        if self.mode == "bar":
            self.bar = tqdm(total=info["total_steps"], initial=info["start_step"], unit="step",
                            file=self.stream, dynamic_ncols=True, desc=c.model)

    def on_step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, row: dict) -> None:
        if self.mode == "log":
            self._print_line(row)
        if self.bar is None:
            return
        post = {"epoch": f"{row['epoch']:.2f}", "loss": f"{row['train_loss']:.3f}",
                "train_acc": f"{row['train_acc']:.3f}"}
        if "test_acc" in row:
            post["test_acc"] = f"{row['test_acc']:.3f}"
        self.bar.set_postfix(post, refresh=True)

    def _print_line(self, row: dict) -> None:
        """examples/s: training examples over the wall time since this process started training
        (evaluation included, unlike the closing line's d2l definition, so that the ETA holds)."""
        started, first_step, first_examples = self.start
        elapsed = max(time.perf_counter() - started, 1e-9)
        steps = row["step"] - first_step
        per_step = elapsed / steps if steps > 0 else None
        rate = (row["examples"] - first_examples) / elapsed
        eta = per_step * (self.info["total_steps"] - row["step"]) if per_step else None
        if eta is not None and self.config.time_budget_s is not None:  # training stops when its time is up
            eta = max(0.0, min(eta, self.config.time_budget_s - row["elapsed_s"]))
        print(log_line(row, self.info["total_steps"], self.config.epochs, rate, eta), file=self.stream, flush=True)

    def on_test_start(self, examples: int, final: bool) -> None:
        if final:  # the phase after training begins: said as it starts
            line = f"Training done; testing on {examples:,} test images..."
            tqdm.write(line, file=self.stream) if self.bar is not None else print(line, file=self.stream, flush=True)

    def on_train_end(self, summary: dict) -> None:
        if self.bar is not None:
            self.bar.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
