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


def test_cpu_budget_fits_training_and_testing_into_the_budget(monkeypatch):
    fake_timings(monkeypatch, lambda config: 1.5 if config.precision == "fp32" else 0.5, 3.0)
    full = make_config("d2l", device="cpu")
    plan = estimate.plan_budget(full, 120, train_examples=60000, test_examples=10000, recipe="fast")
    config = plan.config
    assert config.model == "alexnet" and config.resize is None  # the chapter's net at 224x224
    assert config.preset == "fast-cpu-budget" and config.momentum == 0.9 and config.epochs == 1
    # one evaluation (the epoch's end) of 2,000 test images in batches of 256: 8 x 3 s, reserved
    assert config.limit_test == 2000 and plan.eval_seconds == 24.0
    # the rest, 96 s, trains: at most 96 s / 0.5 s per step = 192 steps of 128 images, stopped at 96 s
    assert config.time_budget_s == 96.0 and config.limit_train == 192 * 128
    out = chapter.describe_budget(plan, full, 60000, 2)
    assert "alexnet-lab train --preset d2l" in out and "Estimated time: 1.6 min of training" in out
    assert "plus ~0.4 min of evaluation" in out and "Training stops after at most 1.6 min" in out
    assert "would take about 2.0 h" in out  # 469 steps x 10 epochs x 1.5 s = 7035 s
    small = estimate.plan_budget(full, 1e6, train_examples=1000, test_examples=500)  # all the data fits
    assert (small.config.limit_train, small.config.limit_test) == (1000, 500)
    # the default recipe, one-epoch's: batch 32, so the same 192 steps take 192 x 32 images
    default = estimate.plan_budget(full, 120, train_examples=60000, test_examples=10000).config
    assert default.preset == "one-epoch-cpu-budget" and default.batch_size == 32
    assert default.limit_train == 192 * 32 and default.time_budget_s == 96.0
    assert "the 'one-epoch' recipe (batch 32," in chapter.describe_budget(
        estimate.plan_budget(full, 120, train_examples=60000, test_examples=10000), full, 60000, 2)


def test_the_chapter_says_how_long_its_budget_run_took_against_the_budget():
    slow = {"steps": 150, "wall_seconds": 246.0, "stopped_at_time_budget": True}
    assert chapter.budget_outcome(slow, 4, 270) == (
        "Budget: trained and tested in 4.1 min of the 4-minute budget (training stopped at its time limit "
        "after 150 of the 270 planned steps: this machine ran slower than measured).")
    quiet = {"steps": 270, "wall_seconds": 228.0, "stopped_at_time_budget": False}
    assert chapter.budget_outcome(quiet, 4, 270).endswith("in 3.8 min of the 4-minute budget (all 270 planned steps).")


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
    assert printed.splitlines()[-2].startswith("Budget: trained and tested in ")
    assert "Tested on the first 64 of the 10,000 test images" in (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 3 * 32 and summary["model"] == "alexnet"  # one-epoch's batch 32
    assert {"curves.png", "curves.svg", "checkpoint.pt", "metrics.jsonl", "config.json"} <= {p.name for p in out.iterdir()}
