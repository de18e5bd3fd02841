"""Exponential moving average of a model's weights (Polyak averaging) for evaluation: a second copy of the model
whose trained parameters move towards the live ones after every step."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """ema = decay_t * ema + (1 - decay_t) * live, decay_t = min(decay, (1 + t) / (10 + t)) after t updates (so
    the first evaluations do not average in the random init); one fused lerp per step, no host sync."""

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
        pairs = list(zip(self.module.parameters(), model.parameters()))
        trained = [(e, p) for e, p in pairs if p.requires_grad and p.is_floating_point()]
        torch._foreach_lerp_([e for e, _ in trained], [p for _, p in trained], weight)
        # Frozen parameters (a whitening layer's filters, set from data after this copy was made) and
        # buffers (BatchNorm statistics) are copied, not averaged.
        for ema_t, live_t in [*((e, p) for e, p in pairs if not p.requires_grad),
                              *zip(self.module.buffers(), model.buffers())]:
            ema_t.copy_(live_t)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
