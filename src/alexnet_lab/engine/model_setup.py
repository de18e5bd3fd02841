"""What a config does to a freshly built model before training (`builders.prepare_model`): its initialisation
(--init, --head-scale) and BatchNorm settings (--bn-momentum, --freeze-bn-weights)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.optimizers import head_layer


def init_weights(model: nn.Module) -> None:
    """d2l's train_ch6 init: xavier_uniform_ on every Conv2d/Linear weight, biases untouched."""
    for m in model.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)


@torch.no_grad()
def dirac_init(model: nn.Module) -> None:
    """airbench's identity init: every trained convolution whose kernel has a centre (odd sides) passes
    its input through unchanged on its first min(in, out) output channels (grouped and frozen ones are
    left as they are); the other outputs keep the model's own initialisation."""
    for m in model.modules():
        if (isinstance(m, nn.Conv2d) and m.weight.requires_grad and m.groups == 1
                and all(k % 2 for k in m.kernel_size)):
            n = min(m.in_channels, m.out_channels)
            nn.init.dirac_(m.weight[:n])


def set_up_model(config: TrainConfig, model: nn.Module) -> None:
    """Initialise `model` as `config` says and apply its BatchNorm settings (seeded by the caller)."""
    if config.init == "xavier":
        init_weights(model)
    elif config.init == "dirac":
        dirac_init(model)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for norm in norms:
        if config.bn_momentum is not None:
            norm.momentum = config.bn_momentum
        if config.freeze_bn_weights and norm.weight is not None:
            norm.weight.requires_grad_(False)  # stays 1 (BatchNorm's init): no gradient, no update, no decay
    head = head_layer(model)
    if config.head_scale != 1 and head is not None:  # optimizers.parameter_groups scales its lr to match
        with torch.no_grad():
            for p in head.parameters():
                p.mul_(config.head_scale)
