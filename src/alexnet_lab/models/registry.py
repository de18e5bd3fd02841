"""The model registry (`register_model`, `build_model`, `list_models`, `get_spec`: the CLI's choices and the
tests' parametrisation) and the input sizes each model accepts (`valid_input_sizes`, `check_input_size`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from alexnet_lab.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    input_size: int  # side of the square input the model is designed for
    description: str
    in_channels: int = 1        # the input channels it is built with unless told otherwise
    augmentation: str = "shift"  # what --augment alone does for it: data.loader.MODEL_AUGMENTS[augmentation]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_size: int, description: str, in_channels: int = 1,
                   augmentation: str = "shift"):
    """Register `builder(in_channels=..., num_classes=..., **options)` under `name`."""
    def decorator(builder: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, input_size, description, in_channels, augmentation)
        return builder
    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"Unknown model '{name}'. Choose one of: {', '.join(list_models())}.") from None


def build_model(name: str, **kwargs) -> nn.Module:
    """A fresh model on the CPU in fp32 (the caller picks device, dtype, memory format); keyword arguments go to
    its builder, as in timm's `create_model`: every model takes `in_channels` and `num_classes`, some more."""
    spec = get_spec(name)
    kwargs.setdefault("in_channels", spec.in_channels)
    try:
        return spec.builder(**kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise UserError(f"Model '{name}' does not take {str(exc).split('argument')[-1].strip()} "
                        "as an option.") from None


def valid_input_sizes(model_name: str, sizes=range(8, 513)) -> list[int]:
    """Input sides the model accepts, found by shape propagation on the meta device (no compute)."""
    with torch.device("meta"):
        model = build_model(model_name)
    model.eval()  # BatchNorm in training mode rejects a batch of one sample per channel
    channels = get_spec(model_name).in_channels
    ok = []
    for s in sizes:
        try:
            model(torch.empty(1, channels, s, s, device="meta"))
            ok.append(s)
        except RuntimeError:
            pass
    return ok


def check_input_size(model_name: str, size: int) -> None:
    """Raise a UserError naming the sizes that work if `model_name` cannot take size x size input."""
    if valid_input_sizes(model_name, [size]):
        return
    valid = valid_input_sizes(model_name)
    if not valid:
        raise UserError(f"Input size {size} (--resize) does not fit model '{model_name}', and no size from 8 to 512 does.")
    contiguous = valid[-1] - valid[0] + 1 == len(valid)
    span = f"{valid[0]}..{valid[-1]}" if contiguous else ", ".join(map(str, valid[:8])) + ("..." if len(valid) > 8 else "")
    raise UserError(f"Input size {size} (--resize) does not fit model '{model_name}' (sizes that work: {span}). "
                    f"The smallest size that works is {valid[0]}.")
