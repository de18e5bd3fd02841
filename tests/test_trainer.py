"""engine/trainer.py: the training loop's own promises: curve points, when it evaluates (--eval-every,
--target-accuracy) and saves best.pt, augmentation for any model, and a diverging run stopped with the
likely cause named and no diverged checkpoint; the time estimate times the same step.

Tiny synthetic data (tests/fakedata.py), CPU, one thread.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.engine import fit, make_config
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.config import MIN_CURVE_POINTS
from alexnet_lab.engine.estimate import evaluations
from alexnet_lab.engine.run_dir import read_metrics
from alexnet_lab.engine.trainer import Callback, TrainingDiverged
from fakedata import bar_splits, synthetic_splits
from runhelpers import config_for, last_line, recipe_args, run_fit, train_args


class Rows:
    def __init__(self):
        self.rows = []

    def __getattr__(self, hook):  # every other callback hook does nothing
        return lambda *args: None

    def on_log(self, row):
        self.rows.append(row)


@pytest.mark.parametrize("epochs, points_per_epoch", [(0.55, 1), (2, 1), (1, 5)])
def test_any_run_draws_at_least_20_curve_points(tmp_path, monkeypatch, epochs, points_per_epoch):
    """A 0.55-epoch speedrun logging once per epoch would otherwise draw three lone dots."""
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    data = fakedata.make_dataset(tmp_path / "data", n_train=1024, n_test=32)  # 64 steps an epoch at batch 16
    config = make_config("speedrun", model="lenet", data_dir=str(data), epochs=epochs, batch_size=16,
                         log_points_per_epoch=points_per_epoch, device="cpu", precision="fp32",
                         channels_last=False)
    rows = Rows()
    with fakedata.one_thread():
        summary = fit(config, [rows])
    steps = [row["step"] for row in rows.rows]
    assert len(steps) >= MIN_CURVE_POINTS and steps == sorted(set(steps)) and steps[-1] == summary["steps"]
    assert sum(row.get("test_acc") is not None for row in rows.rows) == evaluations(config, 1024)


def test_the_step_refuses_uint8_images_saying_how_to_convert_them():
    import torch

    from alexnet_lab.engine import build_training_step
    from alexnet_lab.errors import UserError

    step = build_training_step(make_config("speedrun", model="lenet", device="cpu", precision="fp32",
                                           channels_last=False))
    images = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(UserError, match="to_float_batch"):
        step(images, torch.zeros(4, dtype=torch.int64))
    # Float images train, and the step returns the batch's summed loss and correct count, as the model
    # scored them before its update (computed here independently from a copy of the model).
    torch.manual_seed(0)
    floats = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        logits = copy.deepcopy(step.model)(floats)
    labels = logits.argmax(1).clone()
    labels[3] = (labels[3] + 1) % 10  # three right, one wrong
    loss, correct = step(floats, labels)
    assert int(correct) == 3
    assert float(loss) == pytest.approx(4 * float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)


@pytest.mark.parametrize("name", ["lenet", "lenet-modern"])
def test_augment_flag_trains_any_model(name, capsys):
    config = make_config("d2l", model=name, epochs=1, batch_size=16, lr=0.1, augment=True, device="cpu")
    augmented = fit(config, splits=synthetic_splits())
    assert augmented["steps"] == 4
    plain = fit(make_config("d2l", model=name, epochs=1, batch_size=16, lr=0.1, augment=False, device="cpu"),
                splits=synthetic_splits())
    assert augmented["train_loss"] != plain["train_loss"]  # same seed, other images: the augmentation ran


# --- when it evaluates ----------------------------------------------------------------------------

@pytest.mark.parametrize("eval_every, tested_steps", [(1, [10, 20, 25]), (2, [20, 25]), (0, [25])])
def test_eval_every_picks_the_tested_epoch_ends(one_thread, eval_every, tested_steps):
    """--eval-every N tests at every Nth epoch end and always after the last step (the ladder's
    presets use 0: one evaluation, at the end), as the time estimate counts them."""
    from alexnet_lab.engine import estimate

    config = make_config("d2l", model="lenet", epochs=2.5, batch_size=10, lr=0.1, device="cpu",
                         eval_every=eval_every)
    summary = fit(config, [rows := Rows()], splits=bar_splits(100, 20, noisy_test=True))
    tested = [r["step"] for r in rows.rows if "test_acc" in r]
    assert tested == tested_steps and len(tested) == estimate.evaluations(config, 100)
    assert summary["test_acc"] == rows.rows[-1]["test_acc"]


def test_target_accuracy_evaluates_at_every_log_point(one_thread):
    """What --target-accuracy's help says, and what the time estimate counts: a test evaluation at
    every log point (every 10 // 5 = 2 steps and at each epoch's end), here 8 in 1.5 epochs."""
    from alexnet_lab.engine import estimate

    config = make_config("d2l", model="lenet", epochs=1.5, batch_size=10, lr=0.1, device="cpu",
                         target_accuracy=0.99)
    summary = fit(config, [rows := Rows()], splits=bar_splits(100, 20, noisy_test=True))
    assert not summary["reached_target"]
    tested = [r["step"] for r in rows.rows if "test_acc" in r]
    assert tested == [2, 4, 6, 8, 10, 12, 14, 15] and len(tested) == estimate.evaluations(config, 100)


def test_target_accuracy_stops_at_first_evaluation_reaching_it():
    splits = bar_splits(256, 64)
    config = make_config("speedrun", epochs=6, batch_size=32, log_points_per_epoch=4,
                         target_accuracy=0.9, device="cpu", compile=False)
    rows = Rows()
    summary = fit(config, [rows], splits=splits)
    evaluated = [r for r in rows.rows if "test_acc" in r]
    assert len(evaluated) == len(rows.rows)  # with a target, every log point evaluates
    assert summary["reached_target"] and evaluated[-1]["test_acc"] >= 0.9
    assert all(r["test_acc"] < 0.9 for r in evaluated[:-1])
    assert summary["steps"] == evaluated[-1]["step"] < 6 * 8  # stopped before the last step
    assert 0 < summary["time_to_target_s"] <= summary["wall_seconds"]
    # measured at the reaching evaluation: after the previous log point, before this row's timestamp
    assert evaluated[-2]["elapsed_s"] < summary["time_to_target_s"] <= evaluated[-1]["elapsed_s"]


def test_unreachable_target_runs_every_step():
    splits = bar_splits(256, 64, noisy_test=True)
    config = make_config("speedrun", epochs=1, batch_size=64, log_points_per_epoch=2,
                         target_accuracy=0.95, device="cpu", compile=False)
    summary = fit(config, splits=splits)
    assert summary["steps"] == 4 and not summary["reached_target"] and summary["time_to_target_s"] is None


def test_train_cli_reports_time_to_target(bar_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "speedrun", "--epochs", "6", "--batch-size", "32", "--no-compile",
                 "--target-accuracy", "0.5", "--data-dir", str(bar_data_dir), "--device", "cpu",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reached_target"] and summary["time_to_target_s"] > 0
    printed = capsys.readouterr().out
    assert f"in {summary['time_to_target_s']:.1f} s" in printed
    # the recipe as what differs from the book's (d2l: alexnet, 10 epochs, batch 128, lr 0.01, ...), in order
    assert (f"Recipe (speedrun): the book's d2l recipe with model=speednet, epochs=6.0, batch_size=32, lr=0.1, "
            f"momentum=0.9, nesterov=True, ") in printed and f"(all settings: {out / 'config.json'})" in printed
    assert "weight_decay=" not in printed and "label_smoothing=" not in printed  # the book's values: not repeated


def test_the_speed_estimate_times_the_step_fit_runs(monkeypatch, one_thread):
    """One builder: the estimate's step has the config's loss (label smoothing), schedule and numerics."""
    from alexnet_lab.engine import estimate, step as step_module

    built = []

    def recording_builder(*args, **kwargs):
        built.append(step_module.build_training_step(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(estimate, "build_training_step", recording_builder)
    config = make_config("speedrun", device="cpu", batch_size=4, precision="fp32", channels_last=False,
                         label_smoothing=0.1)  # numerics given: the estimate times this step itself
    assert estimate.seconds_per_step(config, steps=1, warmup=0) > 0
    (step,) = built
    assert step.loss_fn.label_smoothing == config.label_smoothing == 0.1
    assert step.scheduler.last_epoch == 1 and step.optimizer.defaults["nesterov"]
    assert estimate.seconds_per_test_batch(config, steps=1, warmup=0) > 0  # a forward of 256 images


# --- best.pt ----------------------------------------------------------------------------------------

@pytest.mark.usefixtures("offline_cli")
def test_best_pt_is_written_at_each_new_best_with_a_target(data_dir_512, tmp_path):
    """With --target-accuracy every log point evaluates, and each new best test accuracy before the
    last state is saved to best.pt; a best at the last state is checkpoint.pt's, and best.pt then goes."""
    saves = []

    class Saves(Callback):
        def on_checkpoint(self, payload, is_best):
            saves.append((payload["run_state"]["step"], is_best))

    config = config_for(data_dir_512, epochs=1, target_accuracy=1.0, augment=False)  # 1.0: never reached
    run_fit(config, tmp_path / "r", [Saves()])
    tested = [r for r in read_metrics(tmp_path / "r") if "test_acc" in r]
    assert len(tested) == 6  # every 3rd of 16 steps, and the epoch end
    best, bests = -1.0, []
    for row in tested:
        if row["test_acc"] > best:
            best = row["test_acc"]
            bests.append(row["step"])
    assert [step for step, is_best in saves if is_best] == [step for step in bests if step != 16]
    assert saves[-1] == (16, False)  # and the epoch end, the last state, is checkpoint.pt's
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["best_step"] == bests[-1] and summary["best_test_acc"] == best
    if bests[-1] == 16:
        assert summary["best_weights"] == "checkpoint.pt" and not (tmp_path / "r" / "best.pt").exists()
    else:
        assert summary["best_weights"] == "best.pt"
        assert load_checkpoint(tmp_path / "r" / "best.pt")["run_state"]["step"] == bests[-1]


# --- divergence ---------------------------------------------------------------------------------------

class PoisonAt(Callback):
    """Makes the weights NaN after `step` (as a too-high learning rate eventually does)."""

    def __init__(self, model_holder: list, step: int):
        self.holder, self.step = model_holder, step

    def on_step(self, step):
        if step == self.step:
            with torch.no_grad():
                for p in self.holder[0].parameters():
                    p.fill_(float("nan"))


@pytest.mark.usefixtures("offline_cli")
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir_512, tmp_path, monkeypatch):
    import alexnet_lab.engine.step as step

    models = []
    real_prepare = step.prepare_model
    monkeypatch.setattr(step, "prepare_model", lambda *a, **k: models.append(real_prepare(*a, **k)) or models[-1])
    out = tmp_path / "r"
    # 4 epochs of 16 steps: log points every 3rd batch of an epoch (64 steps / 20 points = 3). Step 20
    # is no log point, so the NaN weights are first seen by the --checkpoint-every save at step 20,
    # which must refuse to write them.
    with pytest.raises(TrainingDiverged, match=r"non-finite \(NaN or inf\) by step 20 \(epoch 2\).*lower --lr"):
        run_fit(config_for(data_dir_512, checkpoint_every=1, epochs=4), out, [PoisonAt(models, 20)])
    kept = load_checkpoint(out / "checkpoint.pt")
    assert kept["run_state"]["step"] == 19  # step 19, a log point, is saved by --checkpoint-every too
    assert all(torch.isfinite(v).all() for v in kept["model_state"].values())


@pytest.mark.usefixtures("offline_cli")
def test_too_high_lr_is_a_clear_error(data_dir_512, tmp_path, capsys):
    args = recipe_args(data_dir_512, tmp_path / "r", "--lr", "100", "--schedule", "constant")
    args[args.index("lenet")] = "lenet-modern"  # ReLU and max pooling: diverges at lr 100
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "The training loss became non-finite (NaN or inf) by step" in err and "lower --lr" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("offline_cli")
def test_weight_decay_divergence_is_blamed_on_weight_decay(data_dir, tmp_path, capsys):
    # lr x weight decay = 1000: each step multiplies the weights by -999.
    args = train_args(data_dir, tmp_path / "r", "--lr", "1", "--weight-decay", "1000", "--epochs", "20")
    assert main(args) == 2
    err = last_line(capsys)
    assert "The training loss became non-finite (NaN or inf)" in err
    assert "The weight decay (1000) is too high for the learning rate (1)" in err and "lower --weight-decay" in err
    assert "lower --lr" not in err
