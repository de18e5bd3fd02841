"""Exercise 4: where a training step's compute and memory go, layer by layer, and what bandwidth it implies.

FLOPs follow `torch.utils.flop_counter`: a multiply-add is 2 FLOPs; only convolutions and matrix
products count (element-wise work is not counted). Counts are for the whole probe batch.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from alexnet_lab.engine.config import TrainConfig, make_config
from alexnet_lab.engine.optimizers import parameter_groups

NUMERIC_KEYS = ("params", "forward_flops", "backward_flops", "activation_bytes", "weight_bytes",
                "grad_bytes", "optimizer_bytes", "state_bytes", "bytes_moved")


def leaf_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with no children, in registration order (for the Sequential models: execution order)."""
    return [(name, m) for name, m in model.named_modules() if not list(m.children())]


def forward_flops(layer: nn.Module, in_shape: torch.Size, out_shape: torch.Size) -> int:
    """FLOPs of the layer's forward (conv / linear only; 2 per multiply-add)."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        # every output element is a dot product over (C_in / groups) * kh * kw inputs
        return 2 * math.prod(out_shape) * (layer.in_channels // layer.groups) * kh * kw
    if isinstance(layer, nn.Linear):
        return 2 * math.prod(in_shape[:-1]) * layer.in_features * layer.out_features
    return 0


def trace_layers(model: nn.Module, layers: list[tuple[str, nn.Module]], input_shape: tuple[int, ...]) -> dict:
    """Run one forward on a random probe; per leaf layer: input/output shapes, whether its input needs
    a gradient, and the bytes of the activations autograd saves during its forward."""
    model_state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen_storages: set[int] = set()
    rows: dict[str, dict] = {}
    current: list[str] = []

    def pre_hook(name):
        def hook(module, inputs):
            current.append(name)
            x = inputs[0]
            rows[name] = {"in_shape": x.shape, "input_needs_grad": x.requires_grad, "activation_bytes": 0}
        return hook

    def post_hook(name):
        def hook(module, inputs, output):
            rows[name]["out_shape"] = output.shape
            current.pop()
        return hook

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if current and ptr not in model_state and ptr not in seen_storages:
            seen_storages.add(ptr)
            rows[current[-1]]["activation_bytes"] += t.untyped_storage().nbytes()
        return t

    handles = [h for name, m in layers for h in (m.register_forward_pre_hook(pre_hook(name)),
                                                 m.register_forward_hook(post_hook(name)))]
    try:
        probe = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return rows


def buffered(config: TrainConfig, model: nn.Module) -> set[int]:
    """The ids of the parameters `config`'s optimizer keeps a momentum buffer for (engine/optimizers.py):
    every parameter of an SGD group with momentum > 0, every filter Muon steps (--optimizer muon)."""
    return {id(p) for group in parameter_groups(config, model)
            if group["muon"] or group.get("momentum", config.momentum) > 0 for p in group["params"]}


def layer_costs(name: str, layer: nn.Module, r: dict, buffers: set[int]) -> dict:
    """One layer's row of the profile from its traced shapes (see `profile_model` for definitions)."""
    params = sum(p.numel() for p in layer.parameters(recurse=False))
    trained = sum(p.numel() for p in layer.parameters(recurse=False) if p.requires_grad)
    kept = sum(p.numel() for p in layer.parameters(recurse=False) if id(p) in buffers)
    weight = getattr(layer, "weight", None)
    trains_weight = isinstance(weight, torch.Tensor) and weight.requires_grad  # frozen: a whitening layer
    fwd = forward_flops(layer, r["in_shape"], r["out_shape"])
    bwd = fwd * (int(trains_weight) + int(r["input_needs_grad"]))
    in_bytes, out_bytes, w_bytes = 4 * math.prod(r["in_shape"]), 4 * math.prod(r["out_shape"]), 4 * params
    grad_bytes = 4 * trained
    moved = (in_bytes + w_bytes + out_bytes                       # forward
             + out_bytes + in_bytes + w_bytes + grad_bytes        # backward: dy, x, w in; dw out
             + (in_bytes if r["input_needs_grad"] else 0))        # backward: dx out
    return {
        "name": name, "type": type(layer).__name__, "output_shape": list(r["out_shape"]),
        "params": params, "forward_flops": fwd, "backward_flops": bwd,
        "activation_bytes": r["activation_bytes"], "weight_bytes": w_bytes, "grad_bytes": grad_bytes,
        "optimizer_bytes": 4 * kept, "state_bytes": w_bytes + grad_bytes + 4 * kept,
        "bytes_moved": moved, "intensity": (fwd + bwd) / moved,
    }


def profile_model(model: nn.Module, input_shape: tuple[int, ...], config: TrainConfig | None = None) -> dict:
    """Per-layer costs of one fp32 training step (forward + backward) on a random probe batch, on the CPU,
    with `config`'s optimizer (default: the book's plain SGD).

    backward_flops: grad of the weights (as many FLOPs as the forward; none for a frozen weight) plus
    grad of the input (as many again) unless the layer's input needs no gradient (the first layer's
    image). Gradients are counted for the trained parameters, optimizer buffers as `buffered` says.
    activation_bytes: bytes of the tensors autograd saves for the backward during this layer's
    forward, measured with saved_tensors_hooks; each storage counted once (at the first layer that
    saves it); parameters and buffers excluded. state_bytes: weights + gradients + optimizer buffers
    (fp32). bytes_moved: the least traffic a step needs, each tensor read or written once:
    forward reads input and weights and writes the output; backward reads the output's gradient,
    the saved input and the weights, writes the input's gradient (if needed) and the weights' gradient.
    """
    config = config or make_config("d2l")
    model = model.to("cpu", torch.float32).train()
    layers, buffers = leaf_layers(model), buffered(config, model)
    rows = trace_layers(model, layers, input_shape)
    out = [layer_costs(name, layer, rows[name], buffers) for name, layer in layers
           if name in rows]  # a leaf the forward never called has no row
    total = {key: sum(r[key] for r in out) for key in NUMERIC_KEYS}  # per-layer keys, summed
    # The optimizer's update: read weight and gradient, write weight; read and write each buffer.
    total["optimizer_bytes_moved"] = 4 * 3 * total["params"] + 2 * total["optimizer_bytes"]
    total["step_bytes_moved"] = total["bytes_moved"] + total["optimizer_bytes_moved"]
    # a ratio, not a sum: the whole step's FLOPs over the whole step's least traffic
    total["intensity"] = (total["forward_flops"] + total["backward_flops"]) / total["step_bytes_moved"]
    return {"input_shape": list(input_shape), "optimizer": config.optimizer, "momentum": config.momentum,
            "dtype": "float32",
            "layers": out, "total": total}


def training_flops(layer: dict) -> int:
    return layer["forward_flops"] + layer["backward_flops"]


def dominant(layers: list[dict], key, share: float = 0.5) -> list[tuple[dict, float]]:
    """The fewest layers (largest first) that together hold at least `share` of the total of `key`
    (a field name, or a function of the layer)."""
    value = key if callable(key) else (lambda r: r[key])
    total = sum(value(r) for r in layers)
    if total == 0:
        return []
    picked, acc = [], 0
    for r in sorted(layers, key=lambda r: -value(r)):
        picked.append((r, value(r) / total))
        acc += value(r)
        if acc >= share * total:
            break
    return picked


def findings(profile: dict) -> list[str]:
    """Which layers dominate compute and memory, in words."""
    layers = profile["layers"]

    def names(picked):
        return ", ".join(f"{r['name']} ({r['type']}, {frac:.0%})" for r, frac in picked)

    def by_type(key):
        value = key if callable(key) else (lambda r: r[key])
        shares: dict[str, int] = {}
        for r in layers:
            shares[r["type"]] = shares.get(r["type"], 0) + value(r)
        total = sum(shares.values()) or 1
        return ", ".join(f"{t} {v / total:.0%}" for t, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v)

    lines = [
        f"Compute: {names(dominant(layers, training_flops))} do at least half of the training FLOPs "
        f"(by type: {by_type(training_flops)}).",
        f"Weights, gradients and optimizer state: {names(dominant(layers, 'state_bytes'))} hold at least half "
        f"(by type: {by_type('state_bytes')}).",
        f"Activations kept for backward: {names(dominant(layers, 'activation_bytes'))} hold at least half "
        f"(by type: {by_type('activation_bytes')}).",
    ]
    t = profile["total"]
    state, act = t["state_bytes"], t["activation_bytes"]
    batch = profile["input_shape"][0]
    even = state / max(act / batch, 1)
    lines.append(f"At batch {batch} the weight-side state ({state / 2**20:.1f} MiB) is {state / max(act, 1):.1f}x "
                 f"the activations ({act / 2**20:.1f} MiB); activations grow with the batch and equal it at "
                 f"batch ≈ {even:.0f}.")
    return lines


def measure_copy_bandwidth(device: torch.device, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Device memory bandwidth in bytes/s: a large tensor copy reads and writes `nbytes` each (median)."""
    from alexnet_lab.engine.device import synchronize

    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        if i:  # the first copy is warm-up (page faults, allocation)
            times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times)


def step_timing(config: TrainConfig, total: dict) -> dict:
    """Measure a real training step of `config` (the probe's) and the device's copy bandwidth; compare them:
    the bandwidth the step's least traffic (`total['step_bytes_moved']`) implies at the measured step time."""
    from alexnet_lab.engine.device import resolve_device, resolve_precision
    from alexnet_lab.engine.estimate import seconds_per_step

    device = resolve_device(config.device)
    config = config.replace(device=str(device), precision=resolve_precision(config.precision, device))
    step_s = seconds_per_step(config, steps=3, warmup=1)
    bandwidth = measure_copy_bandwidth(device)
    implied = total["step_bytes_moved"] / step_s
    return {"device": str(device), "precision": config.precision, "channels_last": config.channels_last,
            "optimizer": config.optimizer, "momentum": config.momentum, "step_seconds": step_s,
            "examples_per_sec": config.batch_size / step_s,
            "achieved_flops_per_s": (total["forward_flops"] + total["backward_flops"]) / step_s,
            "implied_bandwidth_bytes_per_s": implied, "measured_bandwidth_bytes_per_s": bandwidth,
            "bandwidth_fraction": implied / bandwidth,
            "memory_time_fraction": total["step_bytes_moved"] / bandwidth / step_s}
