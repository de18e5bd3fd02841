"""engine/run.py, the one lifecycle: `train`, `chapter`, `sweep` and `record` each train through
`engine.run.train` (one `fit` a run); `chapter` now has the preflight checks and the undo of an early
stop; a run tests its weights once, after its last step, and what reads the test (the report,
TensorBoard's images) reads that; best.pt holds only what predicting needs, and only when it is not
checkpoint.pt's state. Tiny synthetic data, CPU, one thread, offline.
"""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
import torch

import fakedata
from alexnet_lab.cli import chapter, main
from alexnet_lab.data import CLASS_NAMES
from alexnet_lab.engine import estimate, evaluation, numerics, preflight, run as lifecycle, trainer
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.run_dir import RunWriter
from runhelpers import during_data_loading, during_the_claim, train_args

pytestmark = pytest.mark.usefixtures("offline_cli")  # conftest.py: offline, one thread, curves as empty files


@pytest.fixture
def fits(monkeypatch) -> list:
    """Every call of `fit` through engine.run (config, callbacks, keyword arguments), each training for real."""
    calls, real = [], lifecycle.fit

    def recording(config, callbacks, **kwargs):
        calls.append((config, callbacks, kwargs))
        return real(config, callbacks, **kwargs)

    monkeypatch.setattr(lifecycle, "fit", recording)
    return calls


def fake_timings(monkeypatch):
    """The chapter's budget planned from made-up timings (no step timed, numerics as given): the fewest
    steps, and of LeNet, not AlexNet (the flow is tested, not the model)."""
    monkeypatch.setattr(estimate, "seconds_per_step", lambda config, steps=2, **kw: 1e9)
    monkeypatch.setattr(estimate, "seconds_per_test_batch", lambda config, **kw: 1.0)
    monkeypatch.setattr(chapter, "seconds_per_step", lambda config, steps=2, **kw: 1e9)
    monkeypatch.setattr(numerics, "time_steps", lambda works, *args, **kwargs: dict.fromkeys(works, 1.0))
    real = estimate.make_config
    monkeypatch.setattr(estimate, "make_config", lambda recipe, **kw: real(recipe, **kw).replace(model="lenet"))


# --- one way in --------------------------------------------------------------------------------------

def test_train_trains_once_through_the_lifecycle_into_its_folder(data_dir, tmp_path, fits):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out, "--no-report", "--no-tensorboard")) == 0
    (config, callbacks, kwargs), = fits
    assert config.model == "lenet" and kwargs["resume"] is None
    assert isinstance(callbacks[0], RunWriter) and callbacks[0].out == out
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-report", "--no-tensorboard"]) == 0
    assert len(fits) == 2 and fits[1][2]["resume"]["run_state"]["step"] == 2


def test_sweep_trains_each_size_once_through_the_lifecycle_in_a_locked_folder(data_dir, tmp_path, fits):
    """A sweep's child (analysis/sweep.py `train_measured`) trains into its bs<N> folder, which it holds."""
    from alexnet_lab.analysis.sweep import train_measured

    locked = []

    class Lock(trainer.Callback):
        def on_train_start(self, info):
            locked.append((tmp_path / "bs16" / ".lock").is_file())

    fits_before = len(fits)
    config = make_config("d2l", model="lenet", epochs=1, batch_size=16, device="cpu", data_dir=str(data_dir))
    real = lifecycle.train
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lifecycle, "train", lambda *a, callbacks=(), **k: real(*a, callbacks=[*callbacks, Lock()], **k))
        result = train_measured(config, tmp_path / "bs16")
    assert result["status"] == "ok" and len(fits) == fits_before + 1 and locked == [True]
    assert (tmp_path / "bs16" / "summary.json").is_file() and not (tmp_path / "bs16" / ".lock").exists()


def test_record_trains_each_seed_once_through_the_lifecycle_without_a_folder(data_dir, tmp_path, fits):
    from alexnet_lab.analysis.record import run_record

    config = make_config("speedrun", data_dir=str(data_dir), device="cpu", epochs=1, batch_size=16)
    os.chdir(tmp_path)  # (monkeypatch's chdir is undone with the fixture): nothing is written here
    result = run_record(config, seeds=2)
    assert len(fits) == 3 and len(result["rows"]) == 2  # a warm-up, then the two seeds
    assert [c.seed for c, _, _ in fits][1:] == [config.seed, config.seed + 1]
    assert all(not any(isinstance(cb, RunWriter) for cb in callbacks) for _, callbacks, _ in fits)
    assert list(tmp_path.iterdir()) == []


def test_the_chapter_trains_once_through_the_lifecycle(data_dir, tmp_path, monkeypatch, fits, capsys):
    fake_timings(monkeypatch)
    out = tmp_path / "chapter"
    assert main(["chapter", "--device", "cpu", "--data-dir", str(data_dir), "--out", str(out), "--no-report",
                 "--no-tensorboard", "--progress", "none"]) == 0
    (config, _, kwargs), = fits
    assert config.preset.endswith("-cpu-budget") and len(kwargs["splits"].train_images) == config.limit_train
    assert capsys.readouterr().out.splitlines()[-1].startswith("Budget: ")  # --no-report: the last line
    assert (out / "predictions.csv").is_file()


# --- the chapter's start-up: preflight, Ctrl-C, undo ------------------------------------------------------

def test_the_chapter_refuses_a_run_that_does_not_fit_in_memory_before_making_a_folder(data_dir, tmp_path,
                                                                                        monkeypatch, capsys):
    fake_timings(monkeypatch)
    monkeypatch.setattr(preflight, "available_bytes", lambda device: 2**20)  # 1 MiB free
    out = tmp_path / "runs" / "chapter"
    assert main(["chapter", "--device", "cpu", "--data-dir", str(data_dir), "--out", str(out)]) == 2
    assert "but only 1.0 MiB is available" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def sigint_default():
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # a shell's `&` started the tests with SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_default")
def test_ctrl_c_while_the_chapter_loads_its_data_stops_before_any_folder(data_dir, tmp_path, monkeypatch, capsys):
    fake_timings(monkeypatch)
    during_data_loading(monkeypatch)
    out = tmp_path / "runs" / "chapter"
    assert main(["chapter", "--device", "cpu", "--data-dir", str(data_dir), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Received SIGINT: stopping before training starts" in err
    assert err.strip().splitlines()[-1] == (
        "alexnet-lab chapter: Stopped by SIGINT before training started; nothing was written.")
    assert not (tmp_path / "runs").exists()


@pytest.mark.usefixtures("sigint_default")
def test_ctrl_c_as_the_chapter_claims_its_folder_takes_the_folder_and_its_parents_back(data_dir, tmp_path,
                                                                                       monkeypatch, capsys):
    fake_timings(monkeypatch)
    during_the_claim(monkeypatch)
    assert main(["chapter", "--device", "cpu", "--data-dir", str(data_dir), "--out",
                 str(tmp_path / "a" / "b" / "chapter")]) == 130
    assert "before training started; nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- one test pass per run -------------------------------------------------------------------------------

def test_a_run_with_its_report_and_tensorboard_tests_once_after_its_last_step(data_dir, tmp_path, monkeypatch):
    """--eval-every 0: one test pass, after the last step; the report, TensorBoard's confusion matrix and
    summary.json all show that one, as predictions.csv keeps it (counted independently from its rows)."""
    from alexnet_lab.reports import plots, tensorboard

    passes, drawn, real = [], [], evaluation.evaluate

    def counted(*args, **kwargs):
        passes.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", counted)
    monkeypatch.setattr(trainer, "evaluate", counted)  # the name fit tests with
    monkeypatch.setattr(tensorboard, "plot_confusion", lambda confusion, *a, **k: (
        drawn.append(confusion.clone()), plots.plot_confusion(confusion, *a, **k)))
    out = tmp_path / "r"
    assert main(train_args(data_dir, out, "--epochs", "2", "--eval-every", "0", "--tensorboard")) == 0
    assert len(passes) == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "test_acc" in r] == [rows[-1]["step"]] == [4]  # after the last step
    with (out / "predictions.csv").open(newline="") as fh:
        kept = list(csv.DictReader(fh))
    assert len(kept) == 32 and [int(row["index"]) for row in kept] == list(range(32))
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    for row in kept:
        confusion[CLASS_NAMES.index(row["true"]), CLASS_NAMES.index(row["predicted"])] += 1
    (tensorboards,) = drawn
    assert torch.equal(tensorboards, confusion)  # TensorBoard's image: the run's own test
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] == confusion.trace().item() / 32 and summary["predictions"] == "predictions.csv"
    page = (out / "report.html").read_text()
    assert f"<b>{summary['test_acc']:.4f}</b> ({confusion.trace().item()} correct)" in page


# --- folders no bigger than needed -----------------------------------------------------------------------

def test_a_run_that_tests_once_writes_its_weights_once(data_dir, tmp_path):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out, "--momentum", "0.9", "--no-report", "--no-tensorboard")) == 0
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint.pt"]
    assert json.loads((out / "summary.json").read_text())["best_weights"] == "checkpoint.pt"


def test_best_pt_holds_only_what_predicting_needs_and_every_command_reads_it(data_dir, tmp_path, monkeypatch,
                                                                            capsys):
    """A best before the last state (the first of two tests made the better one): best.pt holds the
    weights and descriptions, not the momentum buffers, RNG and schedule: half of checkpoint.pt. evaluate,
    predict, export and visualize read it; train --resume reads checkpoint.pt only."""
    from PIL import Image

    real, accuracies = evaluation.evaluate, iter([0.9, 0.5])  # epoch 1 tests better than epoch 2

    def worse_later(*args, **kwargs):
        return {**real(*args, **kwargs), "accuracy": next(accuracies)}

    monkeypatch.setattr(trainer, "evaluate", worse_later)
    out = tmp_path / "r"
    assert main(train_args(data_dir, out, "--epochs", "2", "--momentum", "0.9", "--ema-decay", "0.5",
                           "--no-report", "--no-tensorboard")) == 0
    monkeypatch.undo()
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["best_step"], summary["best_weights"], summary["best_test_acc"]) == (2, "best.pt", 0.9)
    best, full = load_checkpoint(out / "best.pt"), load_checkpoint(out / "checkpoint.pt")
    assert not {"optimizer_state", "scheduler_state", "rng", "ema_state"} & set(best)
    assert best["run_state"]["step"] == 2 and best["run_state"]["metrics"][-1]["test_acc"] == 0.9
    assert (out / "best.pt").stat().st_size < 0.55 * (out / "checkpoint.pt").stat().st_size
    assert best["model_state"].keys() == full["ema_state"]["module"].keys()  # the weights the run tested
    Image.new("L", (28, 28), 200).save(tmp_path / "shirt.png")
    for argv in (["evaluate", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "e")],
                 ["predict", "--checkpoint", str(out / "best.pt"), str(tmp_path / "shirt.png")],
                 ["export", "--checkpoint", str(out / "best.pt"), "--format", "safetensors",
                  "--out", str(tmp_path / "m.safetensors")],
                 ["visualize", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "v")]):
        assert main([*argv, "--device", "cpu"] if argv[0] != "export" else argv) == 0, capsys.readouterr().err
    assert "the same as summary.json's best test acc" not in capsys.readouterr().out  # 0.9 was made up here
    (out / "checkpoint.pt").write_bytes((out / "best.pt").read_bytes())
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-report", "--no-tensorboard"]) == 2
    assert "--resume reads only the run's checkpoint.pt (best.pt holds the best weights for predicting" in \
        capsys.readouterr().err


def test_extending_a_run_whose_best_was_its_last_state_keeps_those_weights_in_best_pt(data_dir, tmp_path,
                                                                                     monkeypatch):
    """A finished run that tested best at its end has no best.pt; trained further (a larger --epochs),
    its checkpoint.pt is rewritten, so the best weights go to best.pt first, and its final test is new."""
    real, accuracies = evaluation.evaluate, iter([0.9, 0.5])

    def worse_later(*args, **kwargs):
        return {**real(*args, **kwargs), "accuracy": next(accuracies)}

    monkeypatch.setattr(trainer, "evaluate", worse_later)
    out = tmp_path / "r"
    assert main(train_args(data_dir, out, "--no-report", "--no-tensorboard")) == 0
    assert not (out / "best.pt").exists()
    first = load_checkpoint(out / "checkpoint.pt")
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-report", "--no-tensorboard"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["best_step"], summary["best_weights"]) == (4, 2, "best.pt")
    best = load_checkpoint(out / "best.pt")
    assert best["run_state"]["step"] == 2
    assert all(torch.equal(best["model_state"][k], v) for k, v in first["model_state"].items())
    assert summary["predictions"] == "predictions.csv" and len((out / "predictions.csv").read_text().splitlines()) == 33
