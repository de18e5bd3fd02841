"""The report's model sections: per-class accuracy, confusion, confused pairs, confident mistakes,
first-layer filters and feature maps, drawn from a run's checkpoint and its test images.

Every section that cannot be built (no checkpoint yet, no data) becomes a sentence saying why.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Callable

import matplotlib
import torch

from alexnet_lab.analysis.features import feature_maps, first_layer_filters, prediction_summary, strongest_channels
from alexnet_lab.data.imagefolder import pixels
from alexnet_lab.data.loader import to_float_batch
from alexnet_lab.engine.builders import input_size, uses_2012_crops
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.evaluation import checkpoint_test_split, evaluate_checkpoint, run_test_record, why_it_differs
from alexnet_lab.engine.inference import load_trained
from alexnet_lab.engine.checkpoint import class_names
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


def pick_checkpoint(run_dir: Path) -> Path | None:
    """best.pt (the best test accuracy so far), else checkpoint.pt (the latest state), else None."""
    for name in ("best.pt", "checkpoint.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def learned_sections(run_dir: Path, *, device: str = "auto", data_dir: str | None = None) -> dict:
    """Context for the model sections of one run: figures as data URIs, tables as rows, notes."""
    path = pick_checkpoint(run_dir)
    if path is None:
        return {"note": "No checkpoint yet (the run stopped before its first one), so there is no trained "
                        "model to look at: no per-class accuracy, mistakes, filters or feature maps."}
    torch_device = resolve_device(device)
    try:
        model, config, payload = load_trained(path, torch_device)
    except UserError as exc:
        return {"note": f"The model sections are missing: {exc}"}
    state = payload.get("run_state", {})
    best = state.get("best_test_acc")
    ctx = {"checkpoint": path.name, "checkpoint_step": state.get("step"),
           "checkpoint_test_acc": best if best is not None and best >= 0 else None,
           "versions": payload.get("versions", {})}
    filters = first_layer_filters(model)
    title = f"{len(filters)} first-layer filters of {config.model}, {filters.shape[1]}x{filters.shape[1]}"
    ctx["filters"] = {"uri": figure_uri(lambda t: plot_filters(filters.numpy(), [t], title=title)),
                      "count": len(filters), "size": filters.shape[1]}
    try:  # the run's own test data (Fashion-MNIST's test set, or the image folder's validation split)
        splits = checkpoint_test_split(config, payload, data_dir=data_dir)
    except UserError as exc:
        ctx["data_note"] = (f"The test images could not be loaded, so the sections that need them (per-class "
                            f"accuracy, confusion, mistakes, feature maps) are missing: {exc}")
        return ctx
    names = [printable(name) for name in class_names(payload)]  # as shown: undecodable bytes as \xNN
    # Measured as the run measured it (its precision, TTA, batch): the accuracy is the run's own.
    evaluation = evaluate_checkpoint(model, config, splits, torch_device, keep_logits=True)
    probs = torch.softmax(evaluation["logits"].double(), dim=1)
    result = prediction_summary(probs, splits.test_labels, len(names), predicted=evaluation["predicted"])
    ctx.update(_prediction_context(result, splits, names, config.model))
    record = run_test_record(payload)
    ctx["test"]["run_acc"] = record["test_acc"] if record else None
    ctx["test"]["differs_because"] = why_it_differs(payload, config, evaluation["settings"], splits)
    prepare = {"input_size": input_size(config), "center_crop": uses_2012_crops(config)}
    x = to_float_batch(pixels(splits.test_images, slice(1)), prepare["input_size"], prepare["center_crop"])
    ctx["feature_maps"] = _feature_map_context(model, x, names, int(splits.test_labels[0]), result)
    return ctx


def _caption(result: dict, labels, names, index: int) -> str:
    return (f"pred {names[int(result['predicted'][index])]} {float(result['confidence'][index]):.0%}\n"
            f"true {names[int(labels[index])]}")


def _prediction_context(result: dict, splits, names, model_name: str) -> dict:
    labels = splits.test_labels.cpu()

    def images(i: int) -> torch.Tensor:  # test image i (a streamed split's is decoded from its file)
        return pixels(splits.test_images, slice(i, i + 1))[0].cpu()

    per_class = [{"name": names[i], "acc": acc, "count": count}
                 for i, (acc, count) in enumerate(zip(result["per_class_acc"], result["class_counts"]))]
    ctx = {"test": {"examples": result["examples"], "correct": result["correct"], "accuracy": result["accuracy"]},
           "per_class": per_class,
           "confusion_uri": figure_uri(lambda t: plot_confusion(
               result["confusion"], names, t, title=f"{model_name}: {result['examples']:,} test images"))}
    predicted = result["predicted"]
    pairs, grid, captions = [], [], []
    for row, (true, pred, count) in enumerate(result["confused_pairs"]):
        picks = ((labels == true) & (predicted == pred)).nonzero().flatten()[:PAIR_EXAMPLES].tolist()
        pairs.append({"row": row + 1, "true": names[true], "pred": names[pred], "count": count,
                      "of": result["class_counts"][true]})
        grid += [images(i) for i in picks] + [None] * (PAIR_EXAMPLES - len(picks))
        captions += [_caption(result, labels, names, i) for i in picks] + [""] * (PAIR_EXAMPLES - len(picks))
    ctx["pairs"] = pairs
    if pairs:
        ctx["pairs_uri"] = figure_uri(lambda t: plot_image_grid(grid, captions, [t], ncols=PAIR_EXAMPLES))
    mistakes = result["mistakes"][:MISTAKES_SHOWN]
    ctx["mistakes"] = {"shown": len(mistakes), "total": len(result["mistakes"])}
    if mistakes:
        ctx["mistakes"]["uri"] = figure_uri(lambda t: plot_image_grid(
            [images(i) for i in mistakes], [_caption(result, labels, names, i) for i in mistakes], [t], ncols=8))
    return ctx


def _feature_map_context(model, x, names, label: int, result: dict) -> dict:
    """Test image 0 (`x`: as the model takes it) through each convolution."""
    layers = feature_maps(model, x)
    for layer in layers:
        layer["channels"] = strongest_channels(layer["maps"], 8)
    label, pred = names[label], names[int(result["predicted"][0])]
    return {"index": 0, "label": label, "pred": pred, "layers": [
                {"index": layer["index"], "name": layer["name"], "shape": "x".join(map(str, layer["shape"]))}
                for layer in layers],
            "uri": figure_uri(lambda t: plot_feature_maps(
                x[0], layers, [t], title=f"test image 0 ({label}; predicted {pred}) through each convolution"))}
