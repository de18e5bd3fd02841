"""`alexnet-lab chapter` (what `make run` runs): the chapter end to end on this machine.

With a GPU: the book's full d2l recipe. On a CPU, where that takes hours, a measured budget that finishes
in minutes: what it runs, what it will likely reach and how long it takes, said before it starts; the
result beside chance, the book's and a whole epoch's at the end, with the command that goes further.
"""

from __future__ import annotations

import io
import math
import time

import numpy as np

from alexnet_lab.analysis.shapes import format_shapes
from alexnet_lab.cli.options import add_data, add_device, positive_number
from alexnet_lab.cli.running import add_output, run_training, tensorboard_on, write_report
from alexnet_lab.engine.builders import input_size
from alexnet_lab.engine.config import TrainConfig, field_range, make_config
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.estimate import (AFTER_TRAINING_MARGIN, BUDGET_CURVE, BUDGET_RECIPES, MEANINGFUL_ACCURACY,
                                         ONE_EPOCH_ACCURACY, ONE_EPOCH_IMAGES, BudgetPlan, expected_accuracy,
                                         images_for, plan_budget, seconds_per_step, total_steps)
from alexnet_lab.engine.run import load_data
from alexnet_lab.engine.run_dir import default_run_dir
from alexnet_lab.models import build_model

NAME = "chapter"
KEEPS_STARTUP_SIGNALS = True  # Ctrl-C is recorded until training starts (cli/signals.py), then a checkpoint
FULL_COMMAND = "alexnet-lab train --preset d2l"


def add_arguments(parser) -> None:
    parser.add_argument("--full", action="store_true", help="run the full d2l recipe even on a CPU")
    parser.add_argument("--budget-minutes", type=positive_number(field_range("time_budget_s")[1] / 60), default=4.0,
                        help="CPU only: minutes of training and testing (training stops in time if the "
                             "machine runs slower than measured)")
    parser.add_argument("--budget-preset", choices=BUDGET_RECIPES, default=BUDGET_RECIPES[0],
                        help="CPU only: the recipe the budget trains with: one-epoch-muon (the most accuracy per "
                             "image measured), one-epoch (the same with SGD for every layer) or fast (batch 128) "
                             f"(default: {BUDGET_RECIPES[0]}; docs/RECORDS.md compares them)")
    add_device(parser)
    add_data(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<timestamp>-alexnet)")
    add_output(parser)


FIGURES_AFTER_TRAINING = 10  # drawn after the test: curves (1), TensorBoard's (2), the report's (7)
BOOK = "the book's AlexNet reaches 0.883 after 10 epochs (600,000 images, on a GPU)"


def run(args) -> int:
    tensorboard = tensorboard_on(args.tensorboard)  # asked for without the package: refused before any work
    print("AlexNet layer shapes for one 1x224x224 image (the chapter's printout):")
    print(format_shapes(build_model("alexnet"), (1, 1, 224, 224)))
    print()
    device = resolve_device(args.device or "auto")
    config = make_config("d2l", device=str(device), data_dir=args.data_dir)
    splits = load_data(config)  # read once: the budget's run trains on its first images
    train_examples, test_examples = len(splits.train_images), len(splits.test_images)
    plan = None
    if device.type == "cpu" and not args.full:
        print("Timing a few steps of the budget's recipe and of the book's on this machine...", flush=True)
        plan = plan_budget(config, args.budget_minutes * 60, train_examples, test_examples,
                           recipe=args.budget_preset, after_seconds=FIGURES_AFTER_TRAINING * seconds_per_figure())
        print(describe_budget(plan, config, train_examples, args.budget_minutes), flush=True)
        config = plan.config
        splits = splits.head(config.limit_train, config.limit_test)
    else:
        step = seconds_per_step(config)
        steps = total_steps(config, train_examples)
        print(f"Running the book's full recipe on {device}: about {step:.3f} s per step x {steps:,} steps "
              f"≈ {step * steps / 60:.1f} min of training (plus evaluation).")
    out = args.out if args.out is not None else default_run_dir(config.model)
    started = time.perf_counter()
    summary = run_training(config, out, splits=splits, progress=args.progress, report=False, tensorboard=tensorboard)
    if plan is not None:
        print(results_in_context(summary, plan, args.budget_minutes, time.perf_counter() - started))
    if args.report:  # last: the report's line ends the output
        print("Writing the report...", flush=True)
        write_report(out, summary["device"])
    return 0


def seconds_per_figure() -> float:
    """Seconds to draw one of the figures that follow training (a 10-class confusion matrix, in memory; the
    second of two draws, so that matplotlib's one-time start-up is not counted ten times)."""
    from alexnet_lab.data import CLASS_NAMES
    from alexnet_lab.reports.plots import plot_confusion

    for _ in range(2):
        started = time.perf_counter()
        plot_confusion(np.eye(len(CLASS_NAMES), dtype=np.int64) * 200, CLASS_NAMES, io.BytesIO(), "timing")
    return time.perf_counter() - started


def _minutes_for(images: int, plan: BudgetPlan) -> int:
    """The --budget-minutes that trains `images` images at the measured speed (and tests and reports)."""
    seconds = images / plan.images_per_second + AFTER_TRAINING_MARGIN * (plan.eval_seconds + plan.after_seconds)
    return max(1, math.ceil(seconds / 60))


def describe_budget(plan: BudgetPlan, full: TrainConfig, train_examples: int, budget_minutes: float) -> str:
    """What the CPU budget runs instead of the full recipe, and why; what it will likely reach; its time."""
    fast, size = plan.config, input_size(full)
    recipe = fast.preset.removesuffix("-cpu-budget")
    expected = expected_accuracy(fast.limit_train)
    if expected < MEANINGFUL_ACCURACY:
        needed = images_for(MEANINGFUL_ACCURACY)
        outlook = (f"At this machine's speed ({plan.images_per_second:.1f} images/s) the budget holds only "
                   f"{fast.limit_train:,} training images: too few for a meaningful result. Expect a test accuracy "
                   f"around {expected:.2f} (chance is 0.10); about {needed:,} images reach {MEANINGFUL_ACCURACY:.2f}: "
                   f'make run ARGS="--budget-minutes {_minutes_for(needed, plan)}".')
    else:
        outlook = (f"Expected test accuracy: about {expected:.2f} after {fast.limit_train:,} images (this recipe's "
                   "measured curve, docs/RECORDS.md; chance is 0.10).")
    return (
        f"No GPU here: the book's full recipe ({full.epochs:g} epochs x {train_examples:,} images at {size}x{size}, "
        f"{full.precision}) would take about {plan.full_train_seconds / 3600:.1f} h of training on this CPU "
        f"(measured: {plan.full_step_seconds:.2f} s per step of {full.batch_size} images).\n"
        f"So this runs a {budget_minutes:g}-minute budget instead: the same AlexNet at {size}x{size}, one pass over "
        f"at most the first {fast.limit_train:,} training images with the '{recipe}' recipe (batch "
        f"{fast.batch_size}, Muon for the convolutions and Nesterov SGD for the rest, one-cycle lr; "
        f"{plan.step_seconds:.2f} s a step here), tested on the first {fast.limit_test:,} test images.\n"
        f"{outlook}\n"
        f"Estimated time: {plan.total_seconds / 60:.1f} min: {plan.train_seconds / 60:.1f} min of training, "
        f"{plan.eval_seconds:.0f} s of testing, {plan.after_seconds:.0f} s for the figures and the report. "
        f"Training stops after at most {fast.time_budget_s / 60:.1f} min, on fewer images if the machine runs "
        f"slower than measured.\n"
        f"For the full recipe: make run ARGS=--full   (or: {FULL_COMMAND})\n")


def results_in_context(summary: dict, plan: BudgetPlan, budget_minutes: float, seconds: float) -> str:
    """The result beside chance, the book's and a whole epoch's, the command that gets further here, and
    how long the run took against its estimate and its budget."""
    steps, images, planned = summary["steps"], summary["train_examples"], plan.config.limit_train
    how = (f"training stopped at its time limit after {images:,} of the {planned:,} planned images: this machine "
           "ran slower than measured" if summary.get("stopped_at_time_budget") else f"all {steps:,} planned steps")
    most = max(BUDGET_CURVE)
    lines = [f"Result: test accuracy {summary['test_acc']:.3f} on the first {plan.config.limit_test:,} test images, "
             f"after {images:,} training images.",
             f"  For scale: chance is 0.100; {BOOK}; one whole epoch ({ONE_EPOCH_IMAGES:,} images) reaches "
             f"{ONE_EPOCH_ACCURACY:.3f} with the one-epoch recipe, and this recipe {BUDGET_CURVE[most]:.3f} after "
             f"{most:,} images (both measured, docs/RECORDS.md)."]
    if images < ONE_EPOCH_IMAGES:  # (at this recipe's measured speed: the one-epoch recipe's step is no slower)
        minutes = _minutes_for(ONE_EPOCH_IMAGES, plan)
        lines.append(f'  A whole epoch with the one-epoch recipe on this machine: make run ARGS="--budget-minutes '
                     f'{minutes} --budget-preset one-epoch" (about {minutes} min).')
    lines.append(f"Budget: {seconds / 60:.1f} min so far, the report next (estimated in all: "
                 f"{plan.total_seconds / 60:.1f} min of the {budget_minutes:g}-minute budget; {how}).")
    return "\n".join(lines)
