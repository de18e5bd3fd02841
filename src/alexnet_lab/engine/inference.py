"""Using a trained model: load it from a checkpoint, classify images."""

from __future__ import annotations

import torch
from torch import nn

from alexnet_lab.engine.checkpoint import check_model_state, load_checkpoint
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.errors import UserError
from alexnet_lab.models import build_model


def evaluated_state(payload: dict) -> dict:
    """The weights the run's test evaluations used: the EMA of the weights when it kept one."""
    ema = payload.get("ema_state")
    return ema["module"] if ema else payload["model_state"]


def load_trained(path, device: torch.device) -> tuple[nn.Module, TrainConfig, dict]:
    """(model in eval mode on `device`, its training config, the checkpoint payload)."""
    payload = load_checkpoint(path)
    check_model_state(payload, path)
    config = TrainConfig.from_dict(payload["config"])
    model = build_model(payload["model_name"])
    try:
        model.load_state_dict(evaluated_state(payload), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"Checkpoint '{path}' does not match model '{payload['model_name']}' "
                        f"({first}). It was written for another model or version.") from None
    model.to(device).eval()
    return model, config, payload
