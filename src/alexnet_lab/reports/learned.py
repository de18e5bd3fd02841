"""The report's model sections: per-class accuracy, confusion, confused pairs, confident mistakes,
first-layer filters and feature maps, drawn from a run's last weights (checkpoint.pt), its final test
pass (predictions.csv: nothing is tested again) and the few test images shown (no others are read).

Every section that cannot be built (no checkpoint yet, no final test, no data) becomes a sentence saying why.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Callable

import matplotlib
import torch

from alexnet_lab import files
from alexnet_lab.analysis.features import feature_maps, first_layer_filters, prediction_summary, strongest_channels
from alexnet_lab.data.imagefolder import pixels
from alexnet_lab.data.loader import to_float_batch
from alexnet_lab.engine.builders import Splits, input_size, uses_2012_crops
from alexnet_lab.engine.checkpoint import class_names
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.evaluation import checkpoint_test_split
from alexnet_lab.engine.inference import load_trained
from alexnet_lab.engine.run_dir import PREDICTIONS, read_predictions
from alexnet_lab.errors import UserError, printable
from alexnet_lab.reports.plots import plot_confusion, plot_feature_maps, plot_filters, plot_image_grid

MISTAKES_SHOWN = 24
PAIR_EXAMPLES = 6


def figure_uri(draw: Callable[[io.BytesIO], None], fmt: str = "png") -> str:
    """Run `draw(target)` (a plots.py function writing to `target`) into memory; return a data: URI.

    No file and no network: the report embeds every figure, so it opens anywhere offline."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"savefig.format": fmt}):
        draw(buffer)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def learned_sections(run_dir: Path, summary: dict | None = None, *, device: str = "auto",
                     data_dir: str | None = None) -> dict:
    """Context for the model sections of one run (`summary`: its summary.json, None while unfinished):
    figures as data URIs, tables as rows, notes."""
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        return {"note": "No checkpoint yet (the run stopped before its first one), so there is no trained "
                        "model to look at: no per-class accuracy, mistakes, filters or feature maps."}
    try:
        model, config, payload = load_trained(path, resolve_device(device))
    except UserError as exc:
        return {"note": f"The model sections are missing: {exc}"}
    step, summary = payload["run_state"]["step"], summary or {}
    ctx = {"checkpoint": path.name, "checkpoint_step": step, "ema": bool(config.ema_decay),
           "versions": payload.get("versions", {})}
    if summary.get("best_step") is not None and summary.get("best_weights"):
        ctx["best"] = {"acc": summary["best_test_acc"], "step": summary["best_step"], "file": summary["best_weights"]}
    filters = first_layer_filters(model)
    title = f"{len(filters)} first-layer filters of {config.model}, {filters.shape[1]}x{filters.shape[1]}"
    ctx["filters"] = {"uri": figure_uri(lambda t: plot_filters(filters.numpy(), [t], title=title)),
                      "count": len(filters), "size": filters.shape[1]}
    names = [printable(name) for name in class_names(payload)]  # as shown: undecodable bytes as \xNN
    predictions = _final_test(run_dir, summary, step, class_names(payload), ctx)
    result = None if predictions is None else prediction_summary(
        predictions["labels"], predictions["predicted"], predictions["confidence"], len(names))
    try:  # the run's own test split, its images read only where shown
        splits = checkpoint_test_split(config, payload, data_dir=data_dir, few=True)
    except UserError as exc:
        ctx["data_note"] = (f"The test images could not be loaded, so the sections that show them (mistakes, "
                            f"feature maps) are missing: {exc}")
        splits = None
    if splits is not None and predictions is not None and not _same_images(splits, predictions):
        ctx["data_note"] = ("The test images here are not the ones the run tested (other files, labels or "
                            "order), so the sections that show them are missing: point --data-dir at the run's data.")
        splits = None
    if result is not None:
        ctx.update(_prediction_context(result, splits, names, config.model))
    if splits is not None:
        x = to_float_batch(pixels(splits.test_images, slice(1)), input_size(config), uses_2012_crops(config))
        pred = names[int(result["predicted"][0])] if result is not None else None
        ctx["feature_maps"] = _feature_map_context(model, x, names[int(splits.test_labels[0])], pred)
    return ctx


def _final_test(run_dir: Path, summary: dict, step: int, names, ctx: dict) -> dict | None:
    """The run's final test pass of the weights at `step` (predictions.csv), or None with a note why not."""
    try:
        if summary.get("predictions") == PREDICTIONS and summary.get("steps") == step:
            return read_predictions(run_dir, names)
        ctx["test_note"] = ("The run has no final test of these weights (predictions.csv is written when a run "
                            "finishes), so there is no per-class accuracy, confusion or mistakes here; "
                            f"alexnet-lab evaluate --checkpoint {run_dir / 'checkpoint.pt'} tests them.")
    except UserError as exc:
        ctx["test_note"] = f"The run's final test cannot be shown: {exc}"
    return None


def _same_images(splits: Splits, predictions: dict) -> bool:
    """Whether the test split read now is the one predictions.csv lists (its labels, and files or count)."""
    where = (list(range(len(splits.test_labels))) if splits.test_files is None
             else [files.csv_cell(printable(name)) for name in splits.test_files])
    return where == predictions["where"] and torch.equal(splits.test_labels.cpu(), predictions["labels"])


def _caption(result: dict, labels, names, index: int) -> str:
    return (f"pred {names[int(result['predicted'][index])]} {float(result['confidence'][index]):.0%}\n"
            f"true {names[int(labels[index])]}")


def _prediction_context(result: dict, splits: Splits | None, names, model_name: str) -> dict:
    """Per-class accuracy, the confusion matrix and the confused pairs of the final test; with `splits`
    (the test images, each decoded when shown) the pairs' examples and the most confident mistakes."""
    per_class = [{"name": names[i], "acc": acc, "count": count}
                 for i, (acc, count) in enumerate(zip(result["per_class_acc"], result["class_counts"]))]
    ctx = {"test": {"examples": result["examples"], "correct": result["correct"], "accuracy": result["accuracy"]},
           "per_class": per_class,
           "confusion_uri": figure_uri(lambda t: plot_confusion(
               result["confusion"], names, t, title=f"{model_name}: {result['examples']:,} test images"))}
    labels, predicted = splits.test_labels.cpu() if splits is not None else None, result["predicted"]
    pairs, grid, captions = [], [], []
    for row, (true, pred, count) in enumerate(result["confused_pairs"]):
        pairs.append({"row": row + 1, "true": names[true], "pred": names[pred], "count": count,
                      "of": result["class_counts"][true]})
        if splits is not None:
            picks = ((labels == true) & (predicted == pred)).nonzero().flatten()[:PAIR_EXAMPLES].tolist()
            grid += [_image(splits, i) for i in picks] + [None] * (PAIR_EXAMPLES - len(picks))
            captions += [_caption(result, labels, names, i) for i in picks] + [""] * (PAIR_EXAMPLES - len(picks))
    ctx["pairs"] = pairs
    if splits is None:
        return ctx
    if pairs:
        ctx["pairs_uri"] = figure_uri(lambda t: plot_image_grid(grid, captions, [t], ncols=PAIR_EXAMPLES))
    mistakes = result["mistakes"][:MISTAKES_SHOWN]
    ctx["mistakes"] = {"shown": len(mistakes), "total": len(result["mistakes"])}
    if mistakes:
        ctx["mistakes"]["uri"] = figure_uri(lambda t: plot_image_grid(
            [_image(splits, i) for i in mistakes], [_caption(result, labels, names, i) for i in mistakes], [t], ncols=8))
    return ctx


def _image(splits: Splits, i: int) -> torch.Tensor:
    """Test image i's pixels (a streamed split's decoded from its file): only the images shown are read."""
    return pixels(splits.test_images, slice(i, i + 1))[0].cpu()


def _feature_map_context(model, x, label: str, pred: str | None) -> dict:
    """Test image 0 (`x`: as the model takes it) through each convolution."""
    layers = feature_maps(model, x)
    for layer in layers:
        layer["channels"] = strongest_channels(layer["maps"], 8)
    shown = f"test image 0 ({label}" + (f"; predicted {pred})" if pred else ")")
    return {"index": 0, "label": label, "pred": pred, "layers": [
                {"index": layer["index"], "name": layer["name"], "shape": "x".join(map(str, layer["shape"]))}
                for layer in layers],
            "uri": figure_uri(lambda t: plot_feature_maps(x[0], layers, [t], title=f"{shown} through each convolution"))}
