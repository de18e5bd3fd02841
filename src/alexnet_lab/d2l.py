"""The book's `d2l` API for the AlexNet chapter: `from alexnet_lab import d2l` runs its code as written (same
names, signatures and printed lines as `d2l.torch`, on this package's batch loader, data sources and plots).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet_lab import files
from alexnet_lab.data.loader import BatchLoader
from alexnet_lab.engine.builders import splits_for
from alexnet_lab.engine.model_setup import init_weights
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.device import backend_flags
from alexnet_lab.engine.step import book_step, correct_count
from alexnet_lab.errors import UserError

# Runs shrunk for tests and quick looks: the first N examples of each split, train_ch6's epochs, where a
# terminal Animator saves its figure.
ENV_LIMIT = "ALEXNET_LAB_D2L_LIMIT"
ENV_EPOCHS = "ALEXNET_LAB_D2L_EPOCHS"
ENV_FIGURE = "ALEXNET_LAB_D2L_FIGURE"
DEFAULT_FIGURE = "d2l-animator.svg"

__all__ = ["Accumulator", "Animator", "Timer", "accuracy", "evaluate_accuracy_gpu", "load_data_fashion_mnist",
           "set_axes", "train_ch6", "try_all_gpus", "try_gpu", "use_svg_display"]


def _env_positive_int(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{name}={value!r}: expected a whole number of at least 1 (or unset it).")
    return int(value)


def _apple_gpu() -> bool:
    """An Apple-silicon GPU (MPS) is usable and there is no CUDA GPU to prefer."""
    return torch.cuda.device_count() == 0 and torch.backends.mps.is_available()


def try_gpu(i: int = 0) -> torch.device:
    """GPU i if it exists, else the CPU (the book's function; an Apple-silicon Mac gets its `mps`)."""
    if torch.cuda.device_count() >= i + 1:
        return torch.device(f"cuda:{i}")
    if i == 0 and _apple_gpu():
        return torch.device("mps")
    return torch.device("cpu")


def try_all_gpus() -> list[torch.device]:
    """Every GPU (CUDA, else the Apple GPU), or [cpu] when there is none."""
    devices = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    if not devices and _apple_gpu():
        devices = [torch.device("mps")]
    return devices if devices else [torch.device("cpu")]


class FashionMNISTBatches:
    """The book's DataLoader: (X (B, 1, S, S) float32 in [0, 1], y (B,) int64), a new permutation per `iter()`
    when shuffled; `to(device)` puts the uint8 split on the device once (batches are then cut there)."""

    def __init__(self, loader: BatchLoader):
        self.loader = loader
        self._epoch = 0
        self._on_device: dict[str, FashionMNISTBatches] = {}

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.loader.set_epoch(self._epoch)
        self._epoch += 1
        return self.loader.iterate(0)

    def to(self, device) -> "FashionMNISTBatches":
        device = torch.device(device)
        if device == self.loader.device:
            return self
        key = str(device)
        if key not in self._on_device:
            src = self.loader
            moved = BatchLoader(src.images, src.labels, src.batch_size, shuffle=src.shuffle, resize=src.resize,
                                device=device, seed=src.seed)
            self._on_device[key] = FashionMNISTBatches(moved)
        batches = self._on_device[key]
        batches._epoch = max(batches._epoch, self._epoch)  # keep drawing new permutations
        return batches


def _on(data_iter, device):
    """This package's batches move to `device` wholesale; any other iterable is used as it is."""
    return data_iter.to(device) if isinstance(data_iter, FashionMNISTBatches) else data_iter


def load_data_fashion_mnist(batch_size: int, resize: int | None = None):
    """Fashion-MNIST as (train_iter, test_iter): shuffled training batches, test batches in order."""
    limit = _env_positive_int(ENV_LIMIT)
    if limit is not None:
        print(f"d2l: using the first {limit} examples of each split ({ENV_LIMIT})", file=sys.stderr)
    splits = splits_for(make_config("d2l", limit_train=limit, limit_test=limit))  # Fashion-MNIST, as the book's
    seed = int(torch.randint(0, 2**31 - 1, ()))
    train = BatchLoader(splits.train_images, splits.train_labels, batch_size, shuffle=True, resize=resize,
                        seed=seed)  # from torch's generator, as the book's DataLoader: torch.manual_seed works
    test = BatchLoader(splits.test_images, splits.test_labels, batch_size, shuffle=False, resize=resize)
    return FashionMNISTBatches(train), FashionMNISTBatches(test)


class Accumulator:
    """For accumulating sums over n variables (the book's class); tensors are summed where they live,
    and reading an entry (a float) is the sync point."""

    def __init__(self, n: int):
        self.data = [0.0] * n

    def add(self, *args) -> None:
        self.data = [a + (b.detach() if isinstance(b, torch.Tensor) else float(b))
                     for a, b in zip(self.data, args)]

    def reset(self) -> None:
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx: int) -> float:
        return float(self.data[idx])


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Compute the number of correct predictions (the book's function: a count, as a float)."""
    return float(correct_count(y_hat, y))


def evaluate_accuracy_gpu(net, data_iter, device=None) -> float:
    """Compute the accuracy for a model on a dataset using a GPU (the book's function)."""
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    if device is not None:
        data_iter = _on(data_iter, device)
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            if isinstance(X, list):
                X = [x.to(device) for x in X]
            else:
                X = X.to(device)
            y = y.to(device)
            metric.add(correct_count(net(X), y), y.numel())
    return metric[0] / metric[1]


class Timer:
    """Record multiple running times (the book's class)."""

    def __init__(self):
        self.times: list[float] = []
        self.start()

    def start(self) -> None:
        self.tik = time.perf_counter()

    def stop(self) -> float:
        self.times.append(time.perf_counter() - self.tik)
        return self.times[-1]

    def avg(self) -> float:
        return sum(self.times) / len(self.times)

    def sum(self) -> float:
        return sum(self.times)

    def cumsum(self) -> list[float]:
        return np.array(self.times).cumsum().tolist()


def _notebook_display():
    """IPython.display when running in a Jupyter kernel; None in a terminal or without IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    from IPython import display
    return display


def use_svg_display() -> None:
    """Use the svg format to display a plot in Jupyter (no-op elsewhere)."""
    try:
        from matplotlib_inline import backend_inline
    except ImportError:
        return
    backend_inline.set_matplotlib_formats("svg")


def set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend) -> None:
    """Set the axes for matplotlib (the book's function)."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xscale(xscale)
    axes.set_yscale(yscale)
    axes.set_xlim(xlim)
    axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


class Animator:
    """For incrementally plotting data in animation (the book's class): redrawn in place in Jupyter; in a
    terminal each point printed to stderr and the figure saved to $ALEXNET_LAB_D2L_FIGURE (./d2l-animator.svg)."""

    def __init__(self, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None, xscale="linear",
                 yscale="linear", fmts=("-", "m--", "g-.", "r:"), nrows=1, ncols=1, figsize=(3.5, 2.5)):
        if legend is None:
            legend = []
        if xlim is not None and xlim[0] == xlim[1]:  # train_ch6 for 1 epoch: xlim [1, 1] is singular
            xlim = [xlim[0] - 1, xlim[1]]
        self.display = _notebook_display()
        if self.display is not None:
            use_svg_display()
            import matplotlib.pyplot as plt
            self.fig, self.axes = plt.subplots(nrows, ncols, figsize=figsize)
        else:  # no pyplot: a bare Figure never opens a window and needs no backend
            from matplotlib.figure import Figure
            self.fig = Figure(figsize=figsize)
            self.axes = self.fig.subplots(nrows, ncols)
        if nrows * ncols == 1:
            self.axes = [self.axes]
        self.config_axes = lambda: set_axes(self.axes[0], xlabel, ylabel, xlim, ylim, xscale, yscale, legend)
        self.legend = list(legend)
        self.xlabel = xlabel or "x"
        self.X, self.Y, self.fmts = None, None, fmts
        self.path: Path | None = None

    def add(self, x, y) -> None:
        """Add multiple data points into the figure."""
        if not hasattr(y, "__len__"):
            y = [y]
        n = len(y)
        if not hasattr(x, "__len__"):
            x = [x] * n
        if not self.X:
            self.X = [[] for _ in range(n)]
        if not self.Y:
            self.Y = [[] for _ in range(n)]
        for i, (a, b) in enumerate(zip(x, y)):
            if a is not None and b is not None:
                self.X[i].append(a)
                self.Y[i].append(b)
        self.axes[0].cla()
        for xs, ys, fmt in zip(self.X, self.Y, self.fmts):
            self.axes[0].plot(xs, ys, fmt)
        self.config_axes()
        if self.display is not None:
            self.display.display(self.fig)
            self.display.clear_output(wait=True)
        else:
            self._print_point(x, y)
            self._save()

    def _print_point(self, x, y) -> None:
        names = self.legend + [f"y{i}" for i in range(len(self.legend), len(y))]
        values = [f"{name} {b:.3f}" for name, b in zip(names, y) if b is not None]
        xs = [a for a, b in zip(x, y) if a is not None and b is not None]
        if values:
            _write(f"{self.xlabel} {xs[0]:.2f}: " + ", ".join(values))

    def _save(self) -> None:
        first = self.path is None
        if first:
            self.path = Path(os.environ.get(ENV_FIGURE) or DEFAULT_FIGURE).resolve()
        try:
            self.fig.tight_layout()
            with files.atomic_writer(self.path) as fh:
                self.fig.savefig(fh, format=self.path.suffix.lstrip(".") or None)
        except files.WriteError as exc:
            raise UserError(f"d2l.Animator cannot write its figure: {exc} Or set {ENV_FIGURE} to a writable "
                            "path.") from None
        if first:
            _write(f"d2l.Animator: figure saved to {self.path} (redrawn at every point)")


def _write(line: str) -> None:
    """A line on stderr that does not tear a tqdm bar; stdout keeps the book's output."""
    from tqdm import tqdm
    tqdm.write(line, file=sys.stderr)


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device):
    """Train a model with a GPU (the book's function, Chapter 6: xavier init, SGD, cross-entropy, an Animator
    with five points per epoch and the test accuracy, the two closing lines). The running sums stay on the
    device, read at those points only (the book reads them every step)."""
    num_epochs = _env_positive_int(ENV_EPOCHS) or num_epochs
    init_weights(net)
    print("training on", device)
    net.to(device)
    train_iter, test_iter = _on(train_iter, device), _on(test_iter, device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    animator = Animator(xlabel="epoch", xlim=[1, num_epochs], legend=["train loss", "train acc", "test acc"])
    timer, num_batches = Timer(), len(train_iter)
    log_every = max(1, num_batches // 5)  # the book's num_batches // 5 is 0 below 5 batches
    bar = _progress_bar(num_epochs * num_batches, animator)
    # cudnn autotuning for the run's fixed shapes (the book leaves it off); restored afterwards.
    with contextlib.ExitStack() as stack:
        stack.enter_context(backend_flags(torch.device(device), deterministic=False))
        if bar is not None:
            stack.callback(bar.close)
        for epoch in range(num_epochs):
            metric = Accumulator(3)
            net.train()
            timer.start()  # timed: batches (cut and resized on the device) and steps, not plots or tests
            for i, (X, y) in enumerate(train_iter):
                loss_sum, correct = book_step(net, loss, optimizer, X, y, device)
                metric.add(loss_sum, correct, y.shape[0])
                if bar is not None:
                    bar.update(1)
                if (i + 1) % log_every == 0 or i == num_batches - 1:
                    train_l = metric[0] / metric[2]  # a host-device sync point: the numbers are shown
                    train_acc = metric[1] / metric[2]
                    timer.stop()
                    animator.add(epoch + (i + 1) / num_batches, (train_l, train_acc, None))
                    timer.start()
            test_acc = evaluate_accuracy_gpu(net, test_iter)
            animator.add(epoch + 1, (None, None, test_acc))
    print(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    print(f"{metric[2] * num_epochs / timer.sum():.1f} examples/sec on {str(device)}")


def _progress_bar(total: int, animator: Animator):
    """A tqdm bar on stderr in a terminal; none in a notebook or when stderr is not a terminal (the figure or
    the printed points are the progress)."""
    if animator.display is not None or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="batch", file=sys.stderr, dynamic_ncols=True, desc="train_ch6", leave=False)
