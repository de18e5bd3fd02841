"""Measured estimates of a run's time before committing to it: time a few real training steps and a
test batch, and plan a run that fits a time budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alexnet_lab.engine.builders import evaluation_batch_size, input_size
from alexnet_lab.engine.config import TrainConfig, log_every, make_config, target_check_due, tests_at_epoch_end
from alexnet_lab.engine.device import autocast
from alexnet_lab.engine.numerics import random_batch, time_steps
from alexnet_lab.engine.step import build_training_step, to_model_input
from alexnet_lab.models import get_spec


def _channels(config: TrainConfig) -> int:
    return config.channels or get_spec(config.model).in_channels


def seconds_per_step(config: TrainConfig, steps: int = 2, warmup: int = 1) -> float:
    """Median seconds of one training step of `config` on random data (after warm-up).

    The step is the one `fit` runs (same builder: numerics, optimizer, schedule, loss, compile). Where
    building it measured its numerics just now (engine/numerics.py), that measurement is the answer:
    the chosen step is not timed a second time."""
    step = build_training_step(config, total_steps=warmup + steps, model_kwargs={"in_channels": _channels(config)})
    if step.numerics.how == "measured" and not config.compile:  # the measurement ran uncompiled steps
        return step.numerics.step_seconds
    images, labels = random_batch(config.batch_size, input_size(config), step.device, _channels(config))
    return time_steps({"step": lambda: step(images, labels)}, step.device, steps, warmup)["step"]


def seconds_per_test_batch(config: TrainConfig, steps: int = 1, warmup: int = 1) -> float:
    """Median seconds of one test batch (`evaluation_batch_size` images, forward only, eval mode,
    `config`'s numerics), as `evaluate` runs it."""
    step = build_training_step(config, model_kwargs={"in_channels": _channels(config)})
    model = step.model.eval()
    images, _ = random_batch(evaluation_batch_size(config), input_size(config), step.device, _channels(config))

    def forward():
        with torch.no_grad(), autocast(step.precision, step.device):
            model(to_model_input(images, step.channels_last))

    return time_steps({"forward": forward}, step.device, steps, warmup)["forward"]


def steps_per_epoch(config: TrainConfig, train_examples: int) -> int:
    return math.ceil(train_examples / config.batch_size)  # the last batch may be short (as in fit)


def total_steps(config: TrainConfig, train_examples: int) -> int:
    """The optimizer steps `fit` takes for `config` on `train_examples` images (fractional epochs too)."""
    return max(1, math.ceil(config.epochs * steps_per_epoch(config, train_examples)))


def evaluations(config: TrainConfig, train_examples: int) -> int:
    """Test-set evaluations `fit` runs: at the epoch ends --eval-every picks and after the last step;
    with a target accuracy, one per log point (the most it runs: it stops at the first that reaches
    the target)."""
    per_epoch = steps_per_epoch(config, train_examples)
    steps = total_steps(config, train_examples)
    if config.target_accuracy is None:
        epochs = math.ceil(steps / per_epoch)
        return sum(tests_at_epoch_end(config, e, e == epochs) for e in range(1, epochs + 1))
    every = log_every(config, per_epoch, steps)
    count = 0
    for step in range(1, steps + 1):
        batch = (step - 1) % per_epoch + 1  # batches of the epoch done after this step
        end = batch == per_epoch or step == steps
        count += (batch % every == 0 or end) and (end or target_check_due(config, batch, per_epoch, steps))
    return count


def evaluation_seconds(config: TrainConfig, train_examples: int, test_examples: int,
                       test_batch_seconds: float) -> float:
    """Time of all test evaluations of a run, from the measured seconds of one test batch."""
    batches = math.ceil(test_examples / evaluation_batch_size(config))
    return evaluations(config, train_examples) * batches * test_batch_seconds


@dataclass(frozen=True)
class BudgetPlan:
    """A run cut to a time budget, with the measurements it was planned from (seconds)."""
    config: TrainConfig          # the run that fits: one pass over at most the first N images, training stopped
                                 # at its time_budget_s (the budget less what follows training, with a margin)
    step_seconds: float          # measured: one step of that run
    train_seconds: float         # its planned training time (to a step)
    eval_seconds: float          # its one test pass, from a measured test batch
    after_seconds: float         # what follows the test: the report's and TensorBoard's figures (measured)
    full_step_seconds: float     # measured: one step of the full recipe (its own numerics)
    full_train_seconds: float    # the full recipe's training time on all the data

    @property
    def total_seconds(self) -> float:
        """The whole command from the first step to the report, on a machine as fast as when measured."""
        return self.train_seconds + self.eval_seconds + self.after_seconds

    @property
    def images_per_second(self) -> float:
        return self.config.batch_size / self.step_seconds


BUDGET_RECIPES = ("one-epoch-muon", "one-epoch", "fast")  # a CPU budget's presets; the first is the default
AFTER_TRAINING_MARGIN = 1.5  # the test pass and figures are reserved at 1.5x their measured time: a machine
# that slows down to half speed after training ends the command that much late, a quiet one as much early
# make run's budget recipe (one-epoch-muon): test accuracy on the first 2,000 test images after N training
# images, one-cycle over exactly those N, the mean of seeds 0 and 1. Accuracy per image is the recipe's, not
# the machine's: benchmarks/budget_curve.py, measured 2026-12-06 (docs/RECORDS.md, "make run's budget curve").
BUDGET_CURVE = {1000: 0.7457, 2500: 0.8145, 5000: 0.8257, 10000: 0.8402, 20000: 0.8388}
# One whole epoch (60,000 images) of the `one-epoch` preset (SGD), tested on all 10,000 test images: 0.8928
# (seed 0, measured 2026-11-29, docs/RECORDS.md "The chapter's AlexNet in one epoch").
ONE_EPOCH_IMAGES, ONE_EPOCH_ACCURACY = 60_000, 0.8928
MEANINGFUL_ACCURACY = 0.80  # below this the budget is said to be too short for a meaningful result


def expected_accuracy(images: int, curve: dict = BUDGET_CURVE) -> float:
    """The curve's test accuracy after `images` training images: linear in log(images) between its points,
    its first value below them (a lower bound there), its last above."""
    points = sorted(curve.items())
    if images <= points[0][0]:
        return points[0][1]
    for (n0, a0), (n1, a1) in zip(points, points[1:]):
        if images <= n1:
            return a0 + (a1 - a0) * math.log(images / n0) / math.log(n1 / n0)
    return points[-1][1]


def images_for(accuracy: float, curve: dict = BUDGET_CURVE) -> int | None:
    """The fewest training images the curve reaches `accuracy` with (None: beyond one whole epoch)."""
    points = sorted(curve.items())
    if accuracy <= points[0][1]:
        return points[0][0]
    for (n0, a0), (n1, a1) in zip(points, points[1:]):
        if a0 < accuracy <= a1:
            return math.ceil(n0 * (n1 / n0) ** ((accuracy - a0) / (a1 - a0)))
    return None


def plan_budget(full: TrainConfig, budget_seconds: float, train_examples: int, test_examples: int,
                limit_test: int = 2000, min_steps: int = 10, recipe: str = BUDGET_RECIPES[0],
                after_seconds: float = 0.0) -> BudgetPlan:
    """The chapter's AlexNet with the `recipe` preset's recipe, tested once on the first `limit_test`
    images, trained for one pass over as many images as fit `budget_seconds` in measured steps (at least
    `min_steps`) once the test pass and `after_seconds` (the figures drawn after it, measured by the
    caller) are reserved, at AFTER_TRAINING_MARGIN. The run's time_budget_s stops training when its time
    is up however slow the steps turn out (the lr schedule following the clock)."""
    if recipe not in BUDGET_RECIPES:
        raise ValueError(f"unknown budget recipe {recipe!r}")
    fast = make_config(recipe, device=full.device, data_dir=full.data_dir)
    step_s = seconds_per_step(fast)
    limit_test = min(limit_test, test_examples)
    # One pass tests once, at its end, however many steps it takes.
    one_pass = fast.replace(epochs=1, limit_test=limit_test)
    eval_s = evaluation_seconds(one_pass, train_examples, limit_test, seconds_per_test_batch(one_pass))
    train_budget = round(max(budget_seconds - AFTER_TRAINING_MARGIN * (eval_s + after_seconds), 1.0), 1)
    steps = max(min_steps, int(train_budget / step_s))
    limit_train = min(train_examples, steps * fast.batch_size)
    budget = fast.replace(epochs=1, limit_train=limit_train, limit_test=limit_test, time_budget_s=train_budget,
                          eval_every=0, preset=f"{recipe}-cpu-budget")
    full_step_s = seconds_per_step(full, steps=1)  # the full recipe's numerics (d2l: fp32, NCHW)
    return BudgetPlan(budget, step_s, total_steps(budget, limit_train) * step_s, eval_s, after_seconds,
                      full_step_s, total_steps(full, train_examples) * full_step_s)
