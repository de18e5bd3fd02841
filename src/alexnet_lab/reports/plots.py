"""Figures (matplotlib, files only): training curves, confusion matrix, run comparison, sweep, profile,
learned filters, feature maps and image grids (the run report's)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.text import Text

from alexnet_lab import files
from alexnet_lab.errors import printable


def _subplots(*args, figsize, dpi, **kwargs):
    """A figure without pyplot: files only, no window, and no backend chosen or changed (so importing
    this module leaves a notebook's inline plots, e.g. d2l's Animator, as they are)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(*args, **kwargs)


def _save(fig, paths: Iterable[Path], suptitle: str = "") -> None:
    """Lay out and write every target: a path (format from its suffix) atomically, or a binary file
    object such as io.BytesIO (format from savefig.format; the report embeds figures this way)."""
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    for text in fig.findobj(Text):  # titles, legends, captions: a name's undecodable bytes would crash the font code
        if not text.get_text().isprintable():
            text.set_text("\n".join(printable(line) for line in text.get_text().split("\n")))
    fig.tight_layout()
    for path in paths:
        if hasattr(path, "write"):
            fig.savefig(path)
        else:
            save_atomically(fig, Path(path))


SIGNATURE = "alexnet-lab"  # a PNG's Software field (matplotlib's default names itself): marks our figures
_SIGNED_PNG = b"tEXtSoftware\x00" + SIGNATURE.encode()  # the PNG text chunk, near the file's start


def save_atomically(fig, path: Path) -> None:
    """Write `path` through files.atomic_writer: a full disk or a kill leaves the previous figure (or
    none), never a torn one; a symlink is refused; an OSError names `path`. A PNG carries SIGNATURE."""
    fmt = path.suffix.lstrip(".").lower() or None
    with files.atomic_writer(path) as fh:
        fig.savefig(fh, format=fmt, **({"metadata": {"Software": SIGNATURE}} if fmt == "png" else {}))


def is_own_figure(path: Path) -> bool:
    """Whether `path` is a PNG this module drew (its signature), which a command may draw again."""
    return _SIGNED_PNG in files.head(path)


def _series(rows: Sequence[dict], key: str) -> tuple[list, list]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(runs: Iterable[tuple[str, Sequence[dict]]], paths: Iterable[Path], title: str = "") -> None:
    """train loss, train acc, test acc against epoch, like d2l's Animator (one style per run)."""
    fig, ax = _subplots(figsize=(4.5, 3.3), dpi=120)
    styles = [("-", "--", "-."), (":", ":", ":")]
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
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


CONFUSION_WIDTH_IN = 6.5    # the figure's width; the report shows it 520 CSS px wide (5.42 in at 96 px/in)
CONFUSION_DISPLAY_PX = 520  # so a font of F pt appears at F * 520 / (6.5 * 96) = 0.83 F pt: 11 pt -> 9.2 pt


def confusion_font_pt(num_classes: int) -> float:
    """Counts at >= 9 pt as the report shows the figure (up to 12 classes; more classes get smaller cells)."""
    return 11.0 if num_classes <= 12 else max(5.0, 11.0 * 12 / num_classes)


def plot_confusion(confusion, class_names: Sequence[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts annotated."""
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = _subplots(figsize=(CONFUSION_WIDTH_IN, 5.9), dpi=120)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    font = confusion_font_pt(len(class_names))
    labels = [printable(name) for name in class_names]  # tick labels are set at drawing time, after _save's pass
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=min(font, 10))
    ax.set_yticks(range(len(labels)), labels, fontsize=min(font, 10))
    ax.set_xlabel("predicted", fontsize=11)
    ax.set_ylabel("true", fontsize=11)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font,
                    color="white" if rates[i, j] > 0.5 else "black")
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("share of the true class (row); cells: image counts", fontsize=10)
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, [path])


def plot_comparison(runs: list[tuple[str, list[dict]]], paths: list[Path], title: str = "") -> None:
    """Two panels, one colour per run: training loss; train accuracy (dashed) and test accuracy (markers)."""

    fig, (ax_loss, ax_acc) = _subplots(1, 2, figsize=(9, 3.4), dpi=110)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
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

    fig, axes = _subplots(1, 3, figsize=(10, 3.0), dpi=110)
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
    fig, axes = _subplots(1, 3, figsize=(11, 0.22 * len(layers) + 1.6), dpi=110, sharey=True)
    for ax, (name, values) in zip(axes, panels):
        total = sum(values) or 1
        ax.barh(range(len(layers)), [100 * v / total for v in values], color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("% of total")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(layers)), labels, fontsize=7)
    axes[0].invert_yaxis()
    _save(fig, [path], suptitle=title)



def as_display(image):
    """An image for imshow: (H, W) grey or (H, W, 3) RGB, float32 in 0..1, from a uint8 (H, W) or
    (C, H, W) array/tensor (values 0..255) or a float (C, H, W) model input (values 0..1)."""
    import numpy as np

    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    a = a.astype("float32") / (255.0 if a.dtype == np.uint8 else 1.0)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)[..., :3]
    return a.clip(0, 1)


def _mosaic(tiles, ncols: int, pad: int = 2):
    """Equal-sized tiles, (h, w) grey or (h, w, 3) RGB (None: empty), laid out in rows on one array,
    `pad` pixels apart; padding is NaN (drawn white) for grey, white for RGB.

    One image on one axes draws far faster than an axes per tile (a 96-filter grid: ~0.1 s, not ~2 s)."""
    import numpy as np

    shaped = next(np.asarray(t) for t in tiles if t is not None)
    h, w = shaped.shape[:2]
    nrows = -(-len(tiles) // ncols)
    canvas = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad, *shaped.shape[2:]),
                     1.0 if shaped.ndim == 3 else float("nan"), dtype=np.float32)
    for i, tile in enumerate(tiles):
        if tile is not None:
            r, c = divmod(i, ncols)
            canvas[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tile
    return canvas, (h, w), nrows


def _unit(x):
    """Scaled to 0..1 by its own range (a constant tile becomes 0)."""
    x = x.astype("float32")
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-12)


def _image_axes(fig, ax, canvas, cmap: str, **kwargs) -> None:
    cm = matplotlib.colormaps[cmap].with_extremes(bad="white")  # NaN: the padding between tiles
    ax.imshow(canvas, cmap=cm, interpolation="nearest", **kwargs)  # RGB canvases ignore the colormap
    ax.set_axis_off()


def plot_filters(filters, paths: Iterable[Path], title: str = "") -> None:
    """First-layer filters (K, k, k) grey or (K, k, k, 3) RGB, one tile each, each scaled to its own
    min..max."""
    ncols = min(len(filters), 16)
    canvas, _, nrows = _mosaic([_unit(w) for w in filters], ncols, pad=max(1, filters.shape[1] // 6))
    fig, ax = _subplots(figsize=(0.5 * ncols + 0.2, 0.5 * nrows + 0.45), dpi=110)
    _image_axes(fig, ax, canvas, "gray", vmin=0, vmax=1)
    _save(fig, paths, suptitle=title)


def plot_feature_maps(image, layers: Sequence[dict], paths: Iterable[Path], channels: int = 8,
                      title: str = "") -> None:
    """The input image, then one row per convolution: `channels` of its output maps, each scaled to
    its own range. `layers`: dicts with index, shape and `maps` (C, H, W); a dict's `channels` list
    picks which maps (e.g. the strongest first), else the first ones."""
    fig, axes = _subplots(len(layers), 2, figsize=(1.05 * (channels + 1.4), 1.05 * len(layers) + 0.4),
                             dpi=110, squeeze=False, gridspec_kw={"width_ratios": [1, channels]})
    for k, (left, right) in enumerate(axes):
        left.set_axis_off()
        if k == 0:
            left.imshow(as_display(image), cmap="gray", vmin=0, vmax=1)
            left.set_title("input", fontsize=8)
        layer = layers[k]
        picks = (layer.get("channels") or list(range(layer["maps"].shape[0])))[:channels]
        maps = layer["maps"].numpy() if hasattr(layer["maps"], "numpy") else layer["maps"]
        canvas, _, _ = _mosaic([_unit(maps[c]) for c in picks], channels, pad=max(1, maps.shape[-1] // 14))
        _image_axes(fig, right, canvas, "viridis", vmin=0, vmax=1)
        c, h, w = layer["shape"]
        right.set_title(f"conv {layer['index']}: {c}x{h}x{w}, channels {', '.join(map(str, picks))}",
                        fontsize=7, loc="left")
    _save(fig, paths, suptitle=title)


CAPTION_PT = 8  # the mistakes grid is 1.15 in a column, shown at ~0.97x: captions appear at ~7.8 pt (10 px)


def plot_image_grid(images, captions: Sequence[str], paths: Iterable[Path], ncols: int = 8, title: str = "",
                    colors: Sequence[str] | None = None) -> None:
    """Small images (uint8 (H, W) grey or (C, H, W); see as_display) on one canvas, a caption under each (e.g. 'pred shirt 97%\ntrue
    t-shirt'); None entries are empty cells (e.g. the end of a short row); at least one image."""
    images = [None if im is None else as_display(im) for im in images]
    ncols = max(1, min(ncols, len(images)))
    pad = 14  # pixels between tiles: room for two caption lines
    canvas, (h, w), nrows = _mosaic(images, ncols, pad=pad)
    fig, ax = _subplots(figsize=(1.15 * ncols, 1.3 * nrows + 0.3), dpi=110)
    _image_axes(fig, ax, canvas, "gray", vmin=0, vmax=1)
    for i, caption in enumerate(captions[:len(images)]):
        if images[i] is not None and caption:
            r, c = divmod(i, ncols)
            ax.text(c * (w + pad) + w / 2, r * (h + pad) + h + 0.5, caption, ha="center", va="top",
                    fontsize=CAPTION_PT, color=colors[i] if colors else "black", linespacing=1.0)
    ax.set_ylim(nrows * (h + pad), -0.5)  # keep the last row's captions inside the figure
    _save(fig, paths, suptitle=title)
