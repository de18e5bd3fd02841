"""The optimizer a config trains with: SGD, or Muon for the convolution filters with SGD for the rest, as one
optimizer (one schedule, one state) whose groups come from `parameter_groups`, a pure function of the config.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.device import cpu_has_fast_bf16

# The quintic Newton-Schulz coefficients of Muon (Keller Jordan's, torch.optim.Muon's defaults).
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
NS_EPS = 1e-7


def sgd_implementation(device: torch.device) -> dict:
    """SGD's kernel choice for `device`. CUDA: fused=True, the whole update in one kernel, which also
    lets GradScaler skip its host sync (it hands the scale and the inf flag to the kernel). Elsewhere
    foreach=True: one multi-tensor kernel per parameter group instead of one per tensor."""
    return {"fused": True, "foreach": False} if device.type == "cuda" else {"fused": False, "foreach": True}


def head_layer(model: nn.Module) -> nn.Linear | None:
    """The model's last linear layer (its classifier head), or None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def one_group(config: TrainConfig) -> bool:
    """Whether the config trains every parameter in one SGD group (no option splits them)."""
    return (config.optimizer == "sgd" and config.bn_bias_lr_scale == 1 and config.head_scale == 1
            and not config.freeze_bn_weights)


def parameter_groups(config: TrainConfig, model: nn.Module) -> list[dict]:
    """The optimizer's groups for `config`, in an order the checkpoint checks know: one group of every
    parameter when no option asks for more (as every earlier checkpoint has); else `filters` (4-D weights,
    Muon's with --optimizer muon), `bn_biases` (--bn-bias-lr-scale), `head` (--head-scale), `rest`, leaving
    out empty groups and untrained parameters. The `muon` key marks the groups Muon steps."""
    if one_group(config):
        return [{"params": list(model.parameters()), "muon": False}]
    kinds = _parameter_kinds(config, model)
    scale = config.head_scale
    settings = {
        "filters": (dict(lr=config.muon_lr, momentum=config.muon_momentum, nesterov=config.muon_momentum > 0,
                         weight_decay=config.weight_decay, muon=True, ns_steps=config.muon_ns_steps,
                         renorm=config.muon_renorm) if config.optimizer == "muon" else {}),
        "bn_biases": dict(lr=config.lr * config.bn_bias_lr_scale),
        # logits = s * (W x + b) trained with lr is W' = s W trained with lr * s^2 and decay / s^2
        "head": dict(lr=config.lr * scale ** 2, weight_decay=config.weight_decay / scale ** 2),
        "rest": {},
    }
    return [{"params": params, "muon": False, "kind": kind, **settings[kind]}
            for kind, params in kinds.items() if params]


def _parameter_kinds(config: TrainConfig, model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trained parameters by kind, each list in the model's order."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    bn_biases = {id(m.bias) for m in norms if m.bias is not None}
    frozen = {id(m.weight) for m in norms if m.weight is not None} if config.freeze_bn_weights else set()
    head = head_layer(model) if config.head_scale != 1 else None
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    kinds: dict[str, list] = {"filters": [], "bn_biases": [], "head": [], "rest": []}
    for p in model.parameters():
        if not p.requires_grad or id(p) in frozen:
            continue
        kind = ("head" if id(p) in head_params else "filters" if p.ndim == 4
                else "bn_biases" if id(p) in bn_biases else "rest")
        kinds[kind].append(p)
    return kinds


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    device = next(model.parameters()).device
    options = dict(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
                   weight_decay=config.weight_decay, **sgd_implementation(device))
    groups = parameter_groups(config, model)
    return (MuonSGD if config.optimizer == "muon" else torch.optim.SGD)(groups, **options)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state, keeping this device's kernel choice: the state of a run
    saved on a GPU says fused=True, which a CPU resuming it must not take over (and vice versa)."""
    optimizer.load_state_dict(state)
    device = optimizer.param_groups[0]["params"][0].device
    for group in optimizer.param_groups:
        group.update(sgd_implementation(device))


@functools.cache
def ns_dtype(device: torch.device) -> torch.dtype:
    """The Newton-Schulz iteration's precision: bf16 (torch.optim.Muon's) where the hardware has it
    natively (CUDA, CPUs with AVX512-BF16 or AMX), fp32 elsewhere: an emulated bf16 matmul on an AVX2 CPU
    made speedrun-94's Muon step 1.7x slower than its SGD step (benchmarks/step_ratio.py)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32


def orthogonalise(matrix: torch.Tensor, steps: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Muon's Newton-Schulz iteration in `dtype`: `matrix` (rows, cols) -> about U V^T of its SVD U S V^T
    (singular values pushed into roughly [0.5, 1.5], which trains as well: Muon's finding)."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=NS_EPS)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class MuonSGD(torch.optim.SGD):
    """SGD whose groups marked `muon` take Muon's update (torch.optim.Muon's on a matrix, tests/test_optimizers.py;
    written here for 4-D filters and one state): Nesterov momentum viewed as an (out, in*k*k) matrix and
    orthogonalised, decoupled weight decay, a step of lr * sqrt(max(1, rows / cols)); with `renorm` the
    filter is first rescaled to norm sqrt(out channels) (airbench's). The state is SGD's."""

    def __init__(self, params, **options):
        super().__init__(params, **options)
        # Muon's groups do not read a GradScaler's inf flag: let the scaler unscale and skip steps itself.
        self._step_supports_amp_scaling = False

    @torch.no_grad()
    def step(self, closure=None):
        groups = self.param_groups
        try:
            self.param_groups = [g for g in groups if not g.get("muon")]
            loss = super().step(closure)
        finally:
            self.param_groups = groups
        for group in groups:
            if group.get("muon"):
                for p in group["params"]:
                    if p.grad is not None:
                        self._muon_update(p, group)
        return loss

    def _muon_update(self, p: torch.Tensor, group: dict) -> None:
        grad, momentum, lr = p.grad, group["momentum"], group["lr"]
        state = self.state[p]
        if state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        buf.lerp_(grad, 1 - momentum)
        update = grad.lerp(buf, momentum) if group["nesterov"] else buf
        matrix = update.reshape(len(update), -1)
        ortho = orthogonalise(matrix, group["ns_steps"], ns_dtype(p.device)).reshape(update.shape)
        if group.get("renorm"):
            p.mul_(math.sqrt(len(p)) / p.norm().clamp(min=NS_EPS))
        p.mul_(1 - lr * group["weight_decay"])
        p.add_(ortho.to(p.dtype), alpha=-lr * math.sqrt(max(1.0, matrix.size(0) / matrix.size(1))))
