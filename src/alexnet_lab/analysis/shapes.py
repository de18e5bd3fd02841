"""Layer-by-layer output shapes, as the chapter prints them, plus optional detail.

The plain form reproduces the chapter's loop character for character:
`print(layer.__class__.__name__, 'output shape:\\t', X.shape)`.
"""

from __future__ import annotations

import torch
from torch import nn


def layer_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, nn.Module, torch.Size]]:
    """(name, layer, output shape) for each top-level layer; computed on the meta device (free)."""
    import copy

    meta_model = copy.deepcopy(model).to("meta")
    x = torch.empty(*input_shape, device="meta")
    rows = []
    for name, layer in meta_model.named_children():
        x = layer(x)
        rows.append((name, layer, x.shape))
    return rows


def format_shapes(model: nn.Module, input_shape: tuple[int, ...], detail: bool = False) -> str:
    lines = []
    params_by_name = {name: sum(p.numel() for p in layer.parameters()) for name, layer in model.named_children()}
    total_bytes = 0
    for name, layer, shape in layer_shapes(model, input_shape):
        line = f"{layer.__class__.__name__} output shape:\t {shape}"  # print()'s sep=' ' around '\t'
        if detail:
            out_bytes = shape.numel() * 4  # fp32 activations
            total_bytes += out_bytes
            line += f"\tparams {params_by_name[name]:>10,}\toutput {out_bytes / 1024:>10,.1f} KiB"
        lines.append(line)
    if detail:
        total = sum(p.numel() for p in model.parameters())
        lines.append(f"Total parameters: {total:,} ({total * 4 / 2**20:.1f} MiB in fp32); "
                     f"layer outputs for input {tuple(input_shape)}: {total_bytes / 2**20:.2f} MiB in fp32")
    return "\n".join(lines)
