"""Using a trained model: load it from a checkpoint, describe its input, turn image files into inputs."""

from __future__ import annotations

import torch
from torch import nn

from alexnet_lab.data import to_float_batch
from alexnet_lab.data.images import load_image, load_image_28
from alexnet_lab.engine.checkpoint import class_names, evaluated_state, load_checkpoint, model_kwargs
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.builders import input_size, stored_size, uses_2012_crops
from alexnet_lab.engine.numerics import as_evaluated
from alexnet_lab.engine.schema import METADATA_FORMAT, check_checkpoint
from alexnet_lab.errors import UserError
from alexnet_lab.models import build_model


def load_trained(path, device: torch.device) -> tuple[nn.Module, TrainConfig, dict]:
    """(model in eval mode on `device`, its training config, the checkpoint payload), every field the
    commands read checked first (engine/schema.py). Numerics the config left to the machine are those
    its run resolved (numerics.as_evaluated), so an evaluation measures as the run did."""
    payload = load_checkpoint(path)
    config = as_evaluated(check_checkpoint(payload, path), payload.get("evaluated_with"), device)
    model = build_model(payload["model_name"], **model_kwargs(payload))
    try:
        model.load_state_dict(evaluated_state(payload), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"Checkpoint '{path}' does not match model '{payload['model_name']}' "
                        f"({first}). It was written for another model or version.") from None
    model.to(device).eval()
    return model, config, payload


def metadata(config: TrainConfig, payload: dict) -> dict:
    """What the exported file needs to be used: classes, input and the image -> input recipe."""
    kwargs = model_kwargs(payload)
    size = input_size(config)
    return {"format": METADATA_FORMAT, "model": config.model, "model_kwargs": kwargs,
            "class_names": list(class_names(payload)),
            "input_size": size, "in_channels": kwargs["in_channels"], "data": config.data,
            "stored_size": stored_size(config), "center_crop": uses_2012_crops(config),
            "normalization": "none: pixel values / 255, in [0, 1] (no mean/std)",
            "input": (f"images: float32 (batch, {kwargs['in_channels']}, {size}, {size}), pixel values / 255 "
                      "(no mean/std normalisation); output logits: float32 (batch, classes)")}


def images_to_input(paths, meta: dict, invert: str = "auto") -> torch.Tensor:
    """Image files -> the model's input (N, C, S, S) float32, prepared as its training data was:
    Fashion-MNIST models get 28x28 grayscale, light on dark (`invert`); image-folder models get the
    folder's decoding (shorter side scaled, centre square) at its stored size."""
    import numpy as np

    channels = meta["in_channels"]
    if meta["data"] == "fashion-mnist":
        pixels = torch.from_numpy(np.stack([load_image_28(p, invert) for p in paths]))  # (N, 28, 28)
        pixels = pixels.unsqueeze(1).expand(-1, channels, -1, -1)
    else:
        pixels = torch.from_numpy(np.stack([load_image(p, meta["stored_size"], channels) for p in paths]))
    return to_float_batch(pixels, meta["input_size"], meta["center_crop"])
