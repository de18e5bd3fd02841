"""`alexnet-lab chapter` (what `make run` runs): the chapter end to end on this machine.

With a GPU: the book's full d2l recipe. On a CPU, where that takes hours, a measured budget that
finishes in minutes, saying so (and how to run the full recipe) before it starts.
"""

from __future__ import annotations

import math

from alexnet_lab.analysis.summary import format_summary
from alexnet_lab.cli.options import add_data, add_device, positive_float
from alexnet_lab.cli.train import add_output, train_and_report
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.estimate import seconds_per_step
from alexnet_lab.models import build_model
from alexnet_lab.reports.run_dir import default_run_dir, prepare_run_dir

NAME = "chapter"
HELP = "the chapter end to end: layer shapes, then train AlexNet (full recipe on a GPU, a budget on CPU)"
FULL_COMMAND = "alexnet-lab train --preset d2l"


def add_arguments(parser) -> None:
    parser.add_argument("--full", action="store_true", help="run the full d2l recipe even on a CPU")
    parser.add_argument("--budget-minutes", type=positive_float, default=4.0,
                        help="CPU only: training time to aim for")
    add_device(parser)
    add_data(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<timestamp>-alexnet)")
    add_output(parser)


def run(args) -> int:
    print("AlexNet layer shapes for one 1x224x224 image (the chapter's printout):")
    print(format_summary(build_model("alexnet"), (1, 1, 224, 224)))
    print()
    device = resolve_device(args.device or "auto")
    config = make_config("d2l", device=str(device), data_dir=args.data_dir)
    if device.type == "cpu" and not args.full:
        config = cpu_budget_config(config, args.budget_minutes)
    else:
        step = seconds_per_step(config)
        steps = math.ceil(60000 / config.batch_size) * config.epochs
        print(f"Running the book's full recipe on {device}: about {step:.3f} s per step x {steps:,} steps "
              f"≈ {step * steps / 60:.1f} min of training (plus evaluation).")
    out = prepare_run_dir(args.out or default_run_dir(config.model))
    train_and_report(config, out, progress=args.progress, report=args.report)
    return 0


def cpu_budget_config(config, budget_minutes: float):
    """The chapter's AlexNet at 224x224 with the `fast` recipe, cut to the examples that fit the budget."""
    fast = make_config("fast", device=config.device, data_dir=config.data_dir)
    step = seconds_per_step(fast)
    steps = max(10, int(budget_minutes * 60 / step))
    limit_train = min(60000, steps * fast.batch_size)
    budget = fast.replace(epochs=1, limit_train=limit_train, limit_test=2000, preset="fast-cpu-budget")
    d2l_step = seconds_per_step(config, steps=1)  # the book's numerics (fp32, NCHW), measured too
    full_hours = d2l_step * math.ceil(60000 / config.batch_size) * config.epochs / 3600
    print(
        f"No GPU here: the book's full recipe (10 epochs x 60,000 images at 224x224, fp32) would take about "
        f"{full_hours:.1f} h on this CPU (measured: {d2l_step:.2f} s per step of {config.batch_size} images in "
        f"fp32, {step:.2f} s with the fast numerics).\n"
        f"So this runs a {budget_minutes:g}-minute budget instead: the same AlexNet at 224x224, one pass over "
        f"the first {limit_train:,} training images with the 'fast' recipe (Nesterov SGD, one-cycle lr to "
        f"{fast.lr}, label smoothing {fast.label_smoothing}, bf16 autocast where the CPU supports it, "
        f"channels-last), tested on the first 2,000 test images.\n"
        f"Estimated time: {steps * step / 60:.1f} min of training plus ~{2000 / (3 * fast.batch_size / step) / 60:.1f} "
        f"min of evaluation.\n"
        f"For the full recipe run: {FULL_COMMAND}   (or: make run ARGS=--full)\n")
    return budget
