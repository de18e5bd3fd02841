"""Figures: the chapter's training curves and the confusion matrix (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402


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
    fig.tight_layout()
    for path in paths:
        fig.savefig(path)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
