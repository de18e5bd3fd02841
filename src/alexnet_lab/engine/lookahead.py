"""Lookahead (Zhang et al., 2019; airbench96's): every `every` steps the slow weights move `alpha` of the way to
the trained ones, which restart from them; its state is in every checkpoint (bit-exact resume)."""

from __future__ import annotations

import torch
from torch import nn


class Lookahead:
    def __init__(self, model: nn.Module, every: int, alpha: float):
        if every < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead needs every >= 1 and alpha in (0, 1], got {every}, {alpha}")
        self.every, self.alpha = every, alpha
        self.steps = 0
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start the slow weights from the model's (after a whitening layer was fitted to the data)."""
        self.slow = [p.detach().clone() for p in self._trained(model)]

    @staticmethod
    def _trained(model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Count an optimizer step; at every `every`-th, sync: slow += alpha (fast - slow); fast = slow."""
        self.steps += 1
        if self.steps % self.every:
            return
        fast = self._trained(model)
        torch._foreach_lerp_(self.slow, fast, self.alpha)
        torch._foreach_copy_(fast, self.slow)

    def state_dict(self) -> dict:
        return {"slow": list(self.slow), "steps": self.steps, "every": self.every, "alpha": self.alpha}

    def load_state_dict(self, state: dict) -> None:
        if len(state["slow"]) != len(self.slow):
            raise ValueError(f"lookahead_state holds {len(state['slow'])} tensors, the model trains {len(self.slow)}")
        for slow, saved in zip(self.slow, state["slow"]):
            slow.copy_(saved)
        self.steps = int(state["steps"])
        self.every, self.alpha = int(state["every"]), float(state["alpha"])
