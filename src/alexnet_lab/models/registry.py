"""The model registry: `register_model`, `build_model`, `list_models`, `get_spec`.

The CLI's choices and the test-suite's parametrisation both come from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from alexnet_lab.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    input_size: int  # side of the square input the model is designed for
    description: str
    in_channels: int = 1        # the input channels it is built with unless told otherwise
    augmentation: str = "shift"  # what --augment does for it (see data.augment)


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
    """A fresh model on the CPU in fp32; the caller picks device, dtype and memory format.

    Keyword arguments go to the model's builder, as in timm's `create_model`: every model takes
    `in_channels` and `num_classes` (defaults: its spec's channels and 10 classes), some take more.
    """
    spec = get_spec(name)
    kwargs.setdefault("in_channels", spec.in_channels)
    try:
        return spec.builder(**kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise UserError(f"Model '{name}' does not take {str(exc).split('argument')[-1].strip()} "
                        "as an option.") from None
