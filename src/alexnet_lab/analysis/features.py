"""What a trained network learned: its first-layer filters, the feature maps of one image through
each convolution, and its test-set predictions (per-class accuracy, confused pairs, confident mistakes).

Plain tensors and dicts, no drawing: `visualize` and the run report both draw from these.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from alexnet_lab.engine.evaluation import confusion_matrix
from alexnet_lab.errors import UserError


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d in forward order of registration, with its name in the model ('0', '3', ...)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def first_layer_filters(model: nn.Module) -> torch.Tensor:
    """The first convolution's weights on the CPU as images: (out_channels, k, k) for one input
    channel (AlexNet here sees one grey channel), (out_channels, k, k, 3) for RGB input (the book's
    figure shows ImageNet's colour filters); other channel counts are averaged to one."""
    layers = conv_layers(model)
    if not layers:
        raise UserError(f"{type(model).__name__} has no convolution, so it has no filters to show.")
    weight = layers[0][1].weight.detach().float().cpu()   # (C_out, C_in, k, k)
    if weight.shape[1] == 3:
        return weight.permute(0, 2, 3, 1).contiguous()    # (C_out, k, k, 3)
    return weight.mean(dim=1)


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """The output of every convolution for one input `x` (1, C, S, S), as the model takes it.

    Returns one dict per Conv2d: name, index (1-based), out shape and `maps` (C, H, W) float32 on the
    CPU (the convolution's output, before its activation). Captured with forward hooks; the model is
    left as it was (its train/eval mode included).
    """
    x = x.to(next(model.parameters()).device)
    captured: list[dict] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: captured.append(
        {"name": name, "maps": out[0].detach().float().cpu()})) for name, m in conv_layers(model)]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for i, entry in enumerate(captured):
        entry["index"] = i + 1
        entry["shape"] = tuple(entry["maps"].shape)
    return captured


def strongest_channels(maps: torch.Tensor, count: int) -> list[int]:
    """Indices of the `count` channels with the largest mean positive activation (what ReLU keeps)."""
    strength = maps.clamp(min=0).flatten(1).mean(dim=1)
    return strength.argsort(descending=True)[:count].tolist()


def prediction_summary(labels: torch.Tensor, predicted: torch.Tensor, confidence: torch.Tensor,
                       num_classes: int, top_pairs: int = 5) -> dict:
    """From a test pass's per-image true class, predicted class and confidence (a run's predictions.csv):
    accuracy, the confusion matrix (rows: true, columns: predicted), per-class accuracy, the most
    confused (true, predicted) pairs and the mistakes ordered from the most confident down."""
    labels, predicted, confidence = labels.cpu().long(), predicted.cpu().long(), confidence.cpu()
    confusion = confusion_matrix(labels, predicted, num_classes).numpy()
    totals = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / totals[i]) if totals[i] else None for i in range(num_classes)]
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1]
    pairs = [(int(i // num_classes), int(i % num_classes), int(off.flat[i])) for i in order[:top_pairs]
             if off.flat[i] > 0]
    wrong = (predicted != labels).nonzero().flatten()
    mistakes = wrong[confidence[wrong].argsort(descending=True, stable=True)].tolist()
    return {"examples": int(len(labels)), "correct": int(np.trace(confusion)),
            "accuracy": float(np.trace(confusion) / max(len(labels), 1)), "confusion": confusion,
            "per_class_acc": per_class, "class_counts": totals.tolist(), "confused_pairs": pairs,
            "mistakes": mistakes, "predicted": predicted, "confidence": confidence}
