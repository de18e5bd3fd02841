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
    config: TrainConfig          # the run that fits: `fast` recipe, at most one pass over the first N images,
                                 # training stopped at its time_budget_s (the budget less the evaluation)
    step_seconds: float          # measured: one step of that run
    train_seconds: float         # its planned training time (its time_budget_s, to a step)
    eval_seconds: float          # its test evaluation, from a measured test batch
    full_step_seconds: float     # measured: one step of the full recipe (its own numerics)
    full_train_seconds: float    # the full recipe's training time on all the data


BUDGET_RECIPES = ("one-epoch", "fast")  # the presets a CPU budget may train with; the first is the default


def plan_budget(full: TrainConfig, budget_seconds: float, train_examples: int, test_examples: int,
                limit_test: int = 2000, min_steps: int = 10, recipe: str = BUDGET_RECIPES[0]) -> BudgetPlan:
    """The chapter's AlexNet with the `recipe` preset's recipe (one-epoch: batch 32; fast: batch 128),
    tested on the first `limit_test` images, trained for one pass over as many images as fit
    `budget_seconds` less the test evaluation's time in measured steps (at least `min_steps`). A
    measurement only predicts: the run's time_budget_s stops its training when that time is up however
    slow the steps turn out (the lr schedule following the clock), and the evaluation after it keeps to
    its estimate unless the machine slows further."""
    if recipe not in BUDGET_RECIPES:
        raise ValueError(f"unknown budget recipe {recipe!r}")
    fast = make_config(recipe, device=full.device, data_dir=full.data_dir)
    step_s = seconds_per_step(fast)
    limit_test = min(limit_test, test_examples)
    # One pass tests once, at its end, however many steps it takes: that time is reserved out of the budget.
    one_pass = fast.replace(epochs=1, limit_test=limit_test)
    eval_s = evaluation_seconds(one_pass, train_examples, limit_test, seconds_per_test_batch(one_pass))
    train_budget = round(max(budget_seconds - eval_s, 1.0), 1)  # seconds, shown to a tenth
    steps = max(min_steps, int(train_budget / step_s))
    limit_train = min(train_examples, steps * fast.batch_size)
    budget = fast.replace(epochs=1, limit_train=limit_train, limit_test=limit_test, time_budget_s=train_budget,
                          preset=f"{recipe}-cpu-budget")
    full_step_s = seconds_per_step(full, steps=1)  # the full recipe's numerics (d2l: fp32, NCHW)
    return BudgetPlan(budget, step_s, total_steps(budget, limit_train) * step_s, eval_s, full_step_s,
                      total_steps(full, train_examples) * full_step_s)
