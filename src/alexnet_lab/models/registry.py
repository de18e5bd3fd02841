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
    input_size: int  # side of the square 1-channel input the model is designed for
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_size: int, description: str):
    def decorator(builder: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, input_size, description)
        return builder
    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"Unknown model '{name}'. Choose one of: {', '.join(list_models())}.") from None


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A fresh model on the CPU in fp32; the caller picks device, dtype and memory format."""
    return get_spec(name).builder(num_classes=num_classes)
