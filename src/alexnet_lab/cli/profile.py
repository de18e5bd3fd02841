"""`alexnet-lab profile` (exercise 4): per-layer FLOPs, memory and arithmetic intensity of a training step,
and the memory bandwidth the measured step time implies against the device's measured bandwidth.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alexnet_lab.analysis.profile import findings, profile_model, step_timing
from alexnet_lab.cli.options import add_adaptation, add_config_flag, add_model, add_probe, model_for_args
from alexnet_lab.engine.config import make_config
from alexnet_lab.models import check_input_size, get_spec
from alexnet_lab.errors import UserError
from alexnet_lab.reports.plots import plot_profile
from alexnet_lab.engine.preflight import check_memory
from alexnet_lab.engine.run_dir import make_output_dir

NAME = "profile"


def add_arguments(parser) -> None:
    add_model(parser)
    add_probe(parser)
    parser.add_argument("--no-timing", dest="timing", action="store_false",
                        help="skip measuring the step time and the device bandwidth")
    # train's settings of the step (default: the d2l preset's); counts are always fp32
    for name in ("optimizer", "momentum", "precision", "channels_last", "device"):
        add_config_flag(parser, name)
    add_adaptation(parser)
    parser.add_argument("--plot", default=None,
                        help="bar chart PNG (default: runs/profile-<model>-<size>-b<batch>.png)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object as the last line")


def fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def format_table(profile: dict) -> str:
    head = (f"{'layer':<6} {'type':<18} {'output shape':<18} {'params':>8} {'fwd FLOPs':>10} {'bwd FLOPs':>10} "
            f"{'activations':>11} {'w+g+opt':>10} {'FLOP/B':>7}")
    lines = [head, "-" * len(head)]
    for r in profile["layers"] + [{**profile["total"], "name": "total", "type": "", "output_shape": ""}]:
        shape = "x".join(map(str, r["output_shape"])) if r["output_shape"] else ""
        lines.append(f"{r['name']:<6} {r['type']:<18} {shape:<18} {fmt_count(r['params']):>8} "
                     f"{fmt_count(r['forward_flops']):>10} {fmt_count(r['backward_flops']):>10} "
                     f"{fmt_bytes(r['activation_bytes']):>11} {fmt_bytes(r['state_bytes']):>10} "
                     f"{r['intensity']:>7.1f}")
    return "\n".join(lines)


def run(args) -> int:
    size = args.resize or get_spec(args.model).input_size
    check_input_size(args.model, size)
    check_memory(args.model, size, args.batch_size, "fp32", torch.device("cpu"))  # the probe runs on the CPU
    model, channels = model_for_args(args)
    config = make_config("d2l", model=args.model, batch_size=args.batch_size, resize=size, channels=channels,
                         **{name: getattr(args, name) for name in ("optimizer", "momentum", "precision",
                                                                   "channels_last", "device")})
    shape = (args.batch_size, channels, size, size)
    profile = profile_model(model, shape, config)
    profile["model"] = args.model
    print(f"{args.model}: one training step on input {list(shape)}; FLOPs as torch.utils.flop_counter counts "
          f"them (multiply-add = 2, conv/matmul only); bytes in fp32; optimizer: {config.optimizer}, momentum "
          f"{config.momentum:g}.")
    print(format_table(profile))
    t = profile["total"]
    print(f"Per step: {fmt_count(t['forward_flops'] + t['backward_flops'])}FLOPs, at least "
          f"{fmt_bytes(t['step_bytes_moved'])} moved (arithmetic intensity {t['intensity']:.1f} FLOP/byte).")
    for line in findings(profile):
        print(line)
    if args.timing:
        profile["timing"] = tm = step_timing(config, t)
        print(f"Measured on {tm['device']} ({tm['precision']}{', channels-last' if tm['channels_last'] else ''}): "
              f"{tm['step_seconds'] * 1000:.1f} ms per training step ({tm['examples_per_sec']:.1f} examples/s) "
              f"= {tm['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s. Moving {fmt_bytes(t['step_bytes_moved'])} in that time "
              f"needs {tm['implied_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; this device's measured copy bandwidth "
              f"is {tm['measured_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s ({tm['bandwidth_fraction']:.0%} of it used): "
              + ("the step is limited by memory traffic." if tm["bandwidth_fraction"] > 0.5 else
                 "memory bandwidth is not the limit; compute (or per-op overhead) is."))
    plot = Path(args.plot if args.plot is not None else f"runs/profile-{args.model}-{size}-b{args.batch_size}.png")
    make_output_dir(plot.parent, "--plot's folder")
    if plot.is_dir() or not plot.name:
        raise UserError(f"--plot '{plot}' is a folder; pass a file name such as '{plot / 'profile.png'}'.")
    plot_profile(profile, plot, f"{args.model}, input {list(shape)}")
    print(f"Bar chart: {plot}")
    if args.json:
        print(json.dumps(profile))
    return 0
