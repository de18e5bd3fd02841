import functools
import json

import pytest

from alexnet_lab.cli import chapter, main
from alexnet_lab.engine import estimate, numerics
from alexnet_lab.engine.config import make_config


def fake_timings(monkeypatch, step_s, test_batch_s):
    """Measured timings replaced: `step_s(config)` seconds a training step, `test_batch_s` a test batch;
    the numerics' candidates (engine/numerics.py) time alike, so the run keeps plain fp32 NCHW."""
    monkeypatch.setattr(estimate, "seconds_per_step", lambda config, steps=2: step_s(config))
    monkeypatch.setattr(estimate, "seconds_per_test_batch", lambda config: test_batch_s)
    monkeypatch.setattr(chapter, "seconds_per_step", lambda config, steps=2: step_s(config))
    monkeypatch.setattr(numerics, "time_steps", lambda works, *args, **kwargs: dict.fromkeys(works, 1.0))


def test_cpu_budget_fits_training_testing_and_figures_into_the_budget(monkeypatch):
    fake_timings(monkeypatch, lambda config: 1.5 if config.precision == "fp32" else 0.5, 3.0)
    full = make_config("d2l", device="cpu")
    plan = estimate.plan_budget(full, 120, train_examples=60000, test_examples=10000, recipe="fast",
                                after_seconds=4.0)
    config = plan.config
    assert config.model == "alexnet" and config.resize is None  # the chapter's net at 224x224
    assert config.preset == "fast-cpu-budget" and config.momentum == 0.9 and config.epochs == 1
    # one evaluation (after the last step) of 2,000 test images in batches of 256: 8 x 3 s
    assert config.limit_test == 2000 and plan.eval_seconds == 24.0
    # the test and the figures are reserved at 1.5x: 120 - 1.5 x (24 + 4) = 78 s of training,
    # 78 s / 0.5 s per step = 156 steps of 128 images, stopped by the clock at 78 s
    assert config.time_budget_s == 78.0 and config.limit_train == 156 * 128
    assert plan.total_seconds == pytest.approx(78 + 24 + 4)  # on a machine as fast as measured: early
    out = chapter.describe_budget(plan, full, 60000, 2)
    assert "make run ARGS=--full" in out and "Estimated time: 1.8 min: 1.3 min of training, 24 s of testing" in out
    assert "Training stops after at most 1.3 min" in out
    assert "would take about 2.0 h" in out  # 469 steps x 10 epochs x 1.5 s = 7035 s
    small = estimate.plan_budget(full, 1e6, train_examples=1000, test_examples=500)  # all the data fits
    assert (small.config.limit_train, small.config.limit_test) == (1000, 500)
    # the default recipe, one-epoch-muon: batch 32, Muon for the convolutions
    default = estimate.plan_budget(full, 120, train_examples=60000, test_examples=10000)
    assert default.config.preset == "one-epoch-muon-cpu-budget" and default.config.batch_size == 32
    assert default.config.optimizer == "muon" and default.config.limit_train == 168 * 32  # 120 - 1.5 x 24 = 84 s
    assert "the 'one-epoch-muon' recipe (batch 32, Muon" in chapter.describe_budget(default, full, 60000, 2)


def test_the_budget_says_what_it_will_likely_reach_and_when_that_is_too_little(monkeypatch):
    fake_timings(monkeypatch, lambda config: 1.0, 1.0)
    full = make_config("d2l", device="cpu")
    curve = estimate.BUDGET_CURVE
    short = estimate.plan_budget(full, 60, train_examples=60000, test_examples=10000)  # a minute: few images
    images = short.config.limit_train
    assert estimate.expected_accuracy(images) < estimate.MEANINGFUL_ACCURACY
    text = chapter.describe_budget(short, full, 60000, 1)
    assert f"the budget holds only {images:,} training images: too few for a meaningful result" in text
    assert f"Expect a test accuracy around {estimate.expected_accuracy(images):.2f}" in text
    needed = estimate.images_for(estimate.MEANINGFUL_ACCURACY)
    minutes = chapter._minutes_for(needed, short)
    assert f'about {needed:,} images reach 0.80: make run ARGS="--budget-minutes {minutes}"' in text
    # ...and that advice holds: a budget of that many minutes plans at least that many images
    assert estimate.plan_budget(full, minutes * 60, 60000, 10000).config.limit_train >= needed
    long = estimate.plan_budget(full, 3600, train_examples=60000, test_examples=10000)
    assert f"Expected test accuracy: about {estimate.expected_accuracy(long.config.limit_train):.2f}" in \
        chapter.describe_budget(long, full, 60000, 60)
    # the curve itself: measured points are returned as measured, rising with the images
    assert [estimate.expected_accuracy(n) for n in sorted(curve)] == [curve[n] for n in sorted(curve)]
    assert all(estimate.images_for(curve[n]) <= n for n in curve)


def test_the_chapter_ends_with_the_result_in_context_and_how_long_it_took(monkeypatch):
    fake_timings(monkeypatch, lambda config: 1.0, 1.0)
    plan = estimate.plan_budget(make_config("d2l", device="cpu"), 240, 60000, 10000)
    epoch = estimate.ONE_EPOCH_IMAGES
    slow = {"steps": 150, "train_examples": 4800, "test_acc": 0.8123, "stopped_at_time_budget": True}
    text = chapter.results_in_context(slow, plan, 4, 246.0)
    assert text.splitlines()[0] == ("Result: test accuracy 0.812 on the first 2,000 test images, after 4,800 "
                                    "training images.")
    assert "chance is 0.100; the book's AlexNet reaches 0.883 after 10 epochs" in text
    most = max(estimate.BUDGET_CURVE)
    assert (f"one whole epoch (60,000 images) reaches 0.893 with the one-epoch recipe, and this recipe "
            f"{estimate.BUDGET_CURVE[most]:.3f} after {most:,} images (both measured") in text
    assert f'make run ARGS="--budget-minutes {chapter._minutes_for(epoch, plan)} --budget-preset one-epoch"' in text
    assert "--epochs" not in text and "--batch-size" not in text  # nothing make run cannot take
    assert text.splitlines()[-1].startswith("Budget: 4.1 min so far, the report next (estimated in all: ")
    assert f"training stopped at its time limit after 4,800 of the {plan.config.limit_train:,} planned images" in text
    quiet = {**slow, "steps": plan.config.limit_train // 32, "stopped_at_time_budget": False}
    assert f"all {plan.config.limit_train // 32:,} planned steps" in chapter.results_in_context(quiet, plan, 4, 228.0)


def test_evaluations_counts_what_fit_evaluates():
    config = make_config("d2l", epochs=2, batch_size=10)  # 10 steps per epoch on 100 images
    assert estimate.evaluations(config, 100) == 2  # one per epoch end
    assert estimate.evaluations(config.replace(target_accuracy=0.9), 100) == 10  # every 2nd step
    # 1.5 epochs with a target: 5 points in epoch 1; batches 2 and 4 and the last step in epoch 2
    assert estimate.evaluations(config.replace(epochs=1.5, target_accuracy=0.9), 100) == 8
    assert estimate.evaluations(config.replace(epochs=1.5), 100) == 2
    # --eval-every: epochs 3 and 6 of 7.5, then after the last step; 0: only after the last step
    assert estimate.evaluations(config.replace(epochs=7.5, eval_every=3), 100) == 3
    assert estimate.evaluations(config.replace(epochs=7.5, eval_every=0), 100) == 1


@pytest.mark.slow  # real Fashion-MNIST, AlexNet at 224x224
def test_make_run_job_end_to_end_on_cpu(tmp_path, monkeypatch, real_data, capsys):
    fake_timings(monkeypatch, lambda config: 1e9, 1.0)  # force the minimum of steps, here 3 (default 10)...
    # ...tested on 64 images: the whole flow, not its duration (benchmarks/ time the real budget)
    monkeypatch.setattr(chapter, "plan_budget", functools.partial(estimate.plan_budget, limit_test=64, min_steps=3))
    out = tmp_path / "chapter"
    assert main(["chapter", "--device", "cpu", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "Numerics: fp32 + channels-first, measured the fastest of " in captured.err  # how auto was chosen
    assert printed.startswith("AlexNet layer shapes")
    assert "Conv2d output shape:\t torch.Size([1, 96, 54, 54])" in printed
    assert f"Results in {out}/" in printed
    assert printed.splitlines()[-1].startswith(f"Report: {out / 'report.html'}")  # the last line names it
    assert "Training stops after at most" in printed
    lines = printed.splitlines()
    assert lines[-2] == "Writing the report..." and lines[-3].startswith("Budget: ")  # each phase said as it starts
    assert lines[-6].startswith("Result: test accuracy ") and "For scale: chance is 0.100" in lines[-5]
    assert "Training done; testing on 64 test images..." in captured.err
    assert "Drawing TensorBoard's final images" in printed or "tensorboard" not in {p.name for p in out.iterdir()}
    assert ("Recipe (one-epoch-muon-cpu-budget): the book's d2l recipe with epochs=1, batch_size=32, lr=0.02, "
            "momentum=0.9, nesterov=True, weight_decay=0.0005, optimizer=muon, muon_lr=0.05, ") in printed
    assert "optimizer steps" not in captured.err  # no advice make run cannot take (--epochs, --batch-size)
    page = (out / "report.html").read_text()
    assert "Tested on the first 64 of the 10,000 test images." in page and "--limit" not in page
    assert "The time budget used the first 96 of the 60,000 training images." in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 3 * 32 and summary["model"] == "alexnet"  # one-epoch-muon's batch 32
    assert {"curves.png", "curves.svg", "checkpoint.pt", "metrics.jsonl", "config.json"} <= {p.name for p in out.iterdir()}
