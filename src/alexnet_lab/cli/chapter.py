"""`alexnet-lab chapter` (what `make run` runs): the chapter end to end on this machine.

With a GPU: the book's full d2l recipe. On a CPU, where that takes hours, a measured budget that
finishes in minutes, saying so (and how to run the full recipe) before it starts, and how long it took.
"""

from __future__ import annotations

from alexnet_lab.analysis.shapes import format_shapes
from alexnet_lab.cli.options import add_data, add_device, positive_number
from alexnet_lab.cli.running import add_output, run_training, tensorboard_on, write_report
from alexnet_lab.engine.builders import input_size
from alexnet_lab.engine.config import TrainConfig, field_range, make_config
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.estimate import BUDGET_RECIPES, BudgetPlan, plan_budget, seconds_per_step, total_steps
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
                        help="CPU only: the recipe the budget trains with: one-epoch (batch 32, the most "
                             "accuracy per image) or fast (batch 128, the most images per second) "
                             f"(default: {BUDGET_RECIPES[0]}; docs/RECORDS.md compares them)")
    add_device(parser)
    add_data(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<timestamp>-alexnet)")
    add_output(parser)


def run(args) -> int:
    tensorboard = tensorboard_on(args.tensorboard)  # asked for without the package: refused before any work
    print("AlexNet layer shapes for one 1x224x224 image (the chapter's printout):")
    print(format_shapes(build_model("alexnet"), (1, 1, 224, 224)))
    print()
    device = resolve_device(args.device or "auto")
    config = make_config("d2l", device=str(device), data_dir=args.data_dir)
    splits = load_data(config)  # read once: the budget's run trains on its first images
    train_examples, test_examples = len(splits.train_images), len(splits.test_images)
    budget = None
    if device.type == "cpu" and not args.full:
        plan = plan_budget(config, args.budget_minutes * 60, train_examples, test_examples,
                           recipe=args.budget_preset)
        print(describe_budget(plan, config, train_examples, args.budget_minutes))
        config, budget = plan.config, args.budget_minutes
        splits = splits.head(config.limit_train, config.limit_test)
    else:
        step = seconds_per_step(config)
        steps = total_steps(config, train_examples)
        print(f"Running the book's full recipe on {device}: about {step:.3f} s per step x {steps:,} steps "
              f"≈ {step * steps / 60:.1f} min of training (plus evaluation).")
    out = args.out if args.out is not None else default_run_dir(config.model)
    summary = run_training(config, out, splits=splits, progress=args.progress, report=False, tensorboard=tensorboard)
    if budget is not None:
        print(budget_outcome(summary, budget, total_steps(config, config.limit_train)))
    if args.report:  # last: the report's line ends the output
        write_report(out, summary["device"])
    return 0


def describe_budget(plan: BudgetPlan, full: TrainConfig, train_examples: int, budget_minutes: float) -> str:
    """What the CPU budget runs instead of the full recipe, and why, with its measured estimates."""
    fast, size = plan.config, input_size(full)
    return (
        f"No GPU here: the book's full recipe ({full.epochs:g} epochs x {train_examples:,} images at {size}x{size}, "
        f"{full.precision}) would take about {plan.full_train_seconds / 3600:.1f} h of training on this CPU "
        f"(measured: {plan.full_step_seconds:.2f} s per step of {full.batch_size} images in {full.precision}, "
        f"{plan.step_seconds:.2f} s per step of {fast.batch_size} with the budget recipe's numerics).\n"
        f"So this runs a {budget_minutes:g}-minute budget instead: the same AlexNet at {size}x{size}, one pass over "
        f"at most the first {fast.limit_train:,} training images with the '{fast.preset.removesuffix('-cpu-budget')}' "
        f"recipe (batch {fast.batch_size}, Nesterov SGD, one-cycle lr to {fast.lr}, label smoothing "
        f"{fast.label_smoothing}, the precision and memory format measured fastest here), tested on the first "
        f"{fast.limit_test:,} test images.\n"
        f"Estimated time: {plan.train_seconds / 60:.1f} min of training plus ~{plan.eval_seconds / 60:.1f} "
        f"min of evaluation (both from timed steps). Training stops after at most "
        f"{fast.time_budget_s / 60:.1f} min, on fewer images if the machine runs slower than measured "
        f"(the lr schedule follows the clock to its end).\n"
        f"For the full recipe run: {FULL_COMMAND}   (or: make run ARGS=--full)\n")


def budget_outcome(summary: dict, budget_minutes: float, planned_steps: int) -> str:
    """How long the budget run took (training and its test, from the first step) against the budget."""
    steps = summary["steps"]
    if summary.get("stopped_at_time_budget"):
        how = (f"training stopped at its time limit after {steps:,} of the {planned_steps:,} planned steps: "
               "this machine ran slower than measured")
    else:
        how = f"all {steps:,} planned steps"
    return (f"Budget: trained and tested in {summary['wall_seconds'] / 60:.1f} min of the {budget_minutes:g}-minute "
            f"budget ({how}).")
