"""Exponential moving average of a model's weights (Polyak averaging), for evaluation.

The average is a second copy of the model; after every optimizer step its floating-point
parameters move towards the live ones and its buffers (BatchNorm statistics) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """ema = decay_t * ema + (1 - decay_t) * live, with decay_t = min(decay, (1 + t) / (10 + t)).

    The warm-up of decay_t (t = updates so far) keeps the first evaluations from averaging in the
    random initialisation. Costs one fused multi-tensor lerp per step, no host sync.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.decay_at(self.updates)
        ema_params = [p for p in self.module.parameters() if p.is_floating_point()]
        live_params = [p for p in model.parameters() if p.is_floating_point()]
        torch._foreach_lerp_(ema_params, live_params, weight)
        for ema_b, live_b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(live_b)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
