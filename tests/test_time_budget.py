"""--time-budget-s: training stops when its time is up, the lr schedule following the clock to its end,
and a quiet machine runs the planned steps as without it. Time is a fake clock here: each training
step takes a set number of seconds, whatever the CPU does.

Tiny synthetic data (tests/fakedata.py), CPU, one thread.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import fakedata
from alexnet_lab.engine import fit, make_config, step as step_module, trainer
from alexnet_lab.engine.trainer import StopRequested
from alexnet_lab.errors import UserError

STEPS = 40          # planned: 640 images at batch 16, one epoch
PLANNED_S = 1.0     # seconds a step was measured to take, so the budget fits the planned steps
BUDGET_S = STEPS * PLANNED_S


class FakeClock:
    """time.perf_counter for engine/trainer.py: moves only while a training step runs."""

    def __init__(self, step_seconds: float):
        self.now, self.step_seconds = 1000.0, step_seconds

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    return fakedata.make_dataset(tmp_path / "data", n_train=STEPS * 16, n_test=32)


def steps_taking(monkeypatch, seconds: float) -> FakeClock:
    """Every training step takes `seconds` on the trainer's clock (the schedule reads it after the step)."""
    clock = FakeClock(seconds)
    real_step = step_module.train_step

    def timed_step(*args, **kwargs):
        clock.now += clock.step_seconds
        return real_step(*args, **kwargs)

    monkeypatch.setattr(step_module, "train_step", timed_step)
    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    return clock


class Rows(trainer.Callback):
    def __init__(self, stop_at: int | None = None):
        self.rows, self.step, self.stop_at = [], 0, stop_at

    def on_step(self, step):
        self.step = step

    def on_log(self, row):
        self.rows.append(row)

    def should_stop(self):
        return self.stop_at is not None and self.step >= self.stop_at


def config_for(data, **changes):
    # speedrun: a one-cycle schedule, 20 % warm-up (8 of the 40 steps), linear decay to 0
    return make_config("speedrun", model="lenet", data_dir=str(data), epochs=1, batch_size=16, lr=0.1,
                       device="cpu", precision="fp32", channels_last=False, **changes)


def one_cycle(position: float) -> float:
    """The one-cycle lr factor at `position` of the 40 planned steps, written out by hand: up from
    1/8 to 1 over the first 8 steps, then down to 0 at step 40."""
    return min(1.0, (position + 1) / 8) if position < 8 else max(0.0, (STEPS - position) / (STEPS - 8))


def test_steps_twice_as_slow_as_planned_stop_at_the_budget_with_the_lr_annealed(data, monkeypatch, one_thread):
    steps_taking(monkeypatch, 2 * PLANNED_S)
    rows = Rows()
    summary = fit(config_for(data, time_budget_s=BUDGET_S), [rows])
    assert summary["steps"] == STEPS // 2 and summary["stopped_at_time_budget"]
    assert summary["wall_seconds"] == pytest.approx(BUDGET_S, rel=0.10)
    # The schedule ran by the clock: after step k, 2k seconds of the 40 had passed (position 2k).
    for row in rows.rows:
        assert row["lr"] == pytest.approx(0.1 * one_cycle(2 * row["step"]), abs=1e-12), row["step"]
    assert rows.rows[-1]["lr"] == 0.0 and "test_acc" in rows.rows[-1]  # annealed, then tested
    assert summary["test_acc"] == rows.rows[-1]["test_acc"]


def test_steps_faster_than_planned_run_the_planned_steps_as_without_a_budget(data, monkeypatch, one_thread):
    steps_taking(monkeypatch, PLANNED_S / 2)
    timed, plain = Rows(), Rows()
    summary = fit(config_for(data, time_budget_s=BUDGET_S), [timed])
    assert summary["steps"] == STEPS and not summary["stopped_at_time_budget"]
    assert summary["wall_seconds"] == pytest.approx(STEPS * PLANNED_S / 2)
    without = fit(config_for(data), [plain])
    assert [r["lr"] for r in timed.rows] == [r["lr"] for r in plain.rows]
    assert [r["lr"] for r in timed.rows] == pytest.approx([0.1 * one_cycle(r["step"]) for r in timed.rows])
    assert summary["train_loss"] == without["train_loss"] and summary["test_acc"] == without["test_acc"]


def test_a_resumed_budget_run_counts_the_time_already_trained(data, monkeypatch, one_thread):
    steps_taking(monkeypatch, 2 * PLANNED_S)
    config = config_for(data, time_budget_s=BUDGET_S)
    with pytest.raises(StopRequested) as stopped:
        fit(config, [Rows(stop_at=6)])
    assert stopped.value.payload["run_state"]["wall_seconds"] == pytest.approx(12.0)
    rows = Rows()
    summary = fit(config, [rows], resume=stopped.value.payload)
    assert summary["steps"] == STEPS // 2 and summary["wall_seconds"] == pytest.approx(BUDGET_S)
    assert rows.rows[-1]["lr"] == 0.0
    again = fit(config, [Rows()], resume={**stopped.value.payload, "run_state": {
        **stopped.value.payload["run_state"], "wall_seconds": BUDGET_S + 1}})
    assert again["steps"] == 6  # its time was up: nothing more to train


def test_a_time_budget_is_refused_under_torchrun():
    config = make_config("speedrun", model="lenet", device="cpu", time_budget_s=60)
    with pytest.raises(UserError, match="--time-budget-s is for one process"):
        fit(config, rank=0, world_size=2)
