"""Figures (matplotlib, files only): training curves, confusion matrix, run comparison, sweep, profile."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, paths: Iterable[Path], suptitle: str = "") -> None:
    """Lay out, write every path (format from its suffix) and free the figure."""
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    for path in paths:
        fig.savefig(path)
    plt.close(fig)


def _series(rows: Sequence[dict], key: str) -> tuple[list, list]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(runs: Iterable[tuple[str, Sequence[dict]]], paths: Iterable[Path], title: str = "") -> None:
    """train loss, train acc, test acc against epoch, like d2l's Animator (one style per run)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.3), dpi=120)
    styles = [("-", "--", "-."), (":", ":", ":")]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs = list(runs)
    for i, (label, rows) in enumerate(runs):
        prefix = f"{label}: " if len(runs) > 1 else ""
        for j, key in enumerate(("train_loss", "train_acc", "test_acc")):
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, linestyle=styles[0][j] if len(runs) == 1 else "-",
                        color=colors[(j if len(runs) == 1 else i) % len(colors)],
                        marker=("o" if len(xs) < 3 else None) if len(runs) == 1 else "ox^"[j], markersize=3,
                        label=prefix + key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, paths)


def plot_confusion(confusion, class_names: Sequence[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts annotated."""
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=120)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, [path])


def plot_comparison(runs: list[tuple[str, list[dict]]], paths: list[Path], title: str = "") -> None:
    """Two panels, one colour per run: training loss; train accuracy (dashed) and test accuracy (markers)."""

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(runs):
        color = colors[i % len(colors)]
        for ax, key, style in ((ax_loss, "train_loss", "-"), (ax_acc, "train_acc", "--"), (ax_acc, "test_acc", "-")):
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=color, marker="o" if key == "test_acc" else None, markersize=3,
                        label=label if key != "train_acc" else None)
    ax_loss.set_title("training loss", fontsize=9)
    ax_acc.set_title("test accuracy (markers), train accuracy (dashed)", fontsize=9)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    ax_acc.legend(fontsize=7, loc="lower right")
    _save(fig, paths, suptitle=title)


def plot_sweep(results: list[dict], paths: list[Path], title: str) -> None:

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.0), dpi=110)
    panels = [("test accuracy", "test_acc", 1), ("examples/s (training)", "examples_per_sec", 1),
              ("peak memory (MiB)", "peak_memory_bytes", 2**20)]
    for ax, (label, key, scale) in zip(axes, panels):
        pts = [(r["batch_size"], r[key] / scale) for r in results if r["status"] == "ok" and r.get(key)]
        if pts:
            ax.plot(*zip(*pts), marker="o")
        for r in results:
            if r["status"] == "out_of_memory":
                ax.axvline(r["batch_size"], color="tab:red", linestyle=":", label="out of memory")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    _save(fig, paths, suptitle=title)


def plot_profile(profile: dict, path: Path, title: str) -> None:
    """Three bar panels per layer: share of training FLOPs, of activation bytes, of weight-side state."""

    layers = profile["layers"]
    labels = [f"{r['name']} {r['type']}" for r in layers]
    panels = [("training FLOPs (fwd+bwd)", [r["forward_flops"] + r["backward_flops"] for r in layers]),
              ("activations kept for backward", [r["activation_bytes"] for r in layers]),
              ("weights + grads + optimizer", [r["state_bytes"] for r in layers])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 0.22 * len(layers) + 1.6), dpi=110, sharey=True)
    for ax, (name, values) in zip(axes, panels):
        total = sum(values) or 1
        ax.barh(range(len(layers)), [100 * v / total for v in values], color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("% of total")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(layers)), labels, fontsize=7)
    axes[0].invert_yaxis()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, [path], suptitle=title)


def _grid(count: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, count))
    return -(-count // ncols), ncols


def plot_filters(filters, paths: Iterable[Path], title: str = "") -> None:
    """First-layer filters (K, k, k), one grey tile each, each scaled to its own min..max."""
    count = len(filters)
    nrows, ncols = _grid(count, 12)
    fig, axes = plt.subplots(nrows, ncols, figsize=(0.62 * ncols, 0.62 * nrows + 0.5), dpi=110, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < count:
            w = filters[i]
            ax.imshow((w - w.min()) / max(float(w.max() - w.min()), 1e-12), cmap="gray", vmin=0, vmax=1)
    _save(fig, paths, suptitle=title)


def plot_feature_maps(image, layers: Sequence[dict], paths: Iterable[Path], channels: int = 8,
                      title: str = "") -> None:
    """One row per convolution: the input image, then its `channels` strongest output channels.

    `layers`: dicts with name, index, shape and `maps` (C, H, W); `channels` picks per layer (the
    caller's order, e.g. strongest first) come from each dict's `channels` list when present."""
    fig, axes = plt.subplots(len(layers), channels + 1, figsize=(1.05 * (channels + 1), 1.15 * len(layers) + 0.4),
                             dpi=110, squeeze=False)
    for row, layer in zip(axes, layers):
        row[0].imshow(image, cmap="gray")
        row[0].set_title("input" if layer is layers[0] else "", fontsize=7)
        picks = layer.get("channels") or list(range(min(channels, layer["maps"].shape[0])))
        for j, ax in enumerate(row[1:]):
            if j < len(picks):
                ax.imshow(layer["maps"][picks[j]], cmap="viridis")
                ax.set_title(f"ch {picks[j]}", fontsize=6)
        c, h, w = layer["shape"]
        row[1].set_ylabel(f"conv {layer['index']}\n{c}x{h}x{w}", fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
    _save(fig, paths, suptitle=title)


def plot_image_grid(images, captions: Sequence[str], paths: Iterable[Path], ncols: int = 8, title: str = "",
                    colors: Sequence[str] | None = None) -> None:
    """Small grey images (N, H, W) with a caption under each (e.g. 'pred shirt 97%\\ntrue t-shirt')."""
    count = max(len(images), 1)
    nrows, ncols = _grid(count, ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.25 * ncols, 1.55 * nrows + 0.3), dpi=110, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < len(images) and images[i] is not None:  # None: an empty cell (e.g. a short row)
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            ax.set_title(captions[i], fontsize=6.5, color=colors[i] if colors else "black")
    _save(fig, paths, suptitle=title)
