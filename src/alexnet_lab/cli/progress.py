"""What a person sees while training: the plan, a tqdm bar with live metrics, the chapter's lines."""

from __future__ import annotations

import sys

from tqdm import tqdm

from alexnet_lab.engine.trainer import Callback


def chapter_lines(summary: dict) -> str:
    """The two lines d2l.train_ch6 prints, with this run's numbers."""
    return (f"loss {summary['train_loss']:.3f}, train acc {summary['train_acc']:.3f}, "
            f"test acc {summary['test_acc']:.3f}\n"
            f"{summary['examples_per_sec']:.1f} examples/sec on {summary['device']}")


def _processes(info: dict, batch_size: int) -> str:
    world_size = info.get("world_size", 1)
    return f" (global: {world_size} processes x {batch_size // world_size})" if world_size > 1 else ""


class ConsoleReporter(Callback):
    def __init__(self, config, out=None, stream=None):
        self.config = config
        self.out = out
        self.stream = stream or sys.stderr  # looked up now, not at import (tests swap sys.stderr)
        self.bar = None

    def on_train_start(self, info: dict) -> None:
        c = self.config
        size = info["input_size"]
        print(f"Training {c.model} ({info['params']:,} parameters), preset '{c.preset}', on {info['device']} "
              f"in {info['precision']}: {info['train_examples']:,} train / {info['test_examples']:,} test "
              f"images at {size}x{size}, batch {c.batch_size}{_processes(info, c.batch_size)}, lr {c.lr}, "
              f"{c.epochs:g} epoch(s) = "
              f"{info['total_steps']:,} steps.", file=self.stream)
        print(f"Data: {info['data_source']}" + (f"   Output: {self.out}" if self.out else ""), file=self.stream)
        self.bar = tqdm(total=info["total_steps"], initial=info["start_step"], unit="step",
                        file=self.stream, dynamic_ncols=True, desc=c.model)

    def on_step(self, step: int) -> None:
        self.bar.update(1)

    def on_log(self, row: dict) -> None:
        post = {"epoch": f"{row['epoch']:.2f}", "loss": f"{row['train_loss']:.3f}",
                "train_acc": f"{row['train_acc']:.3f}"}
        if "test_acc" in row:
            post["test_acc"] = f"{row['test_acc']:.3f}"
        self.bar.set_postfix(post, refresh=True)

    def on_train_end(self, summary: dict) -> None:
        if self.bar is not None:
            self.bar.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
