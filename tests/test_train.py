import json

import pytest
import torch
from PIL import Image

from alexnet_lab import UserError
from alexnet_lab.cli import main
from alexnet_lab.engine.config import TrainConfig

RUN_FILES = {"config.json", "metrics.jsonl", "metrics.csv", "summary.json", "curves.svg", "curves.png", "checkpoint.pt"}


@pytest.mark.slow  # real Fashion-MNIST
def test_the_lenet_one_epoch_command_trains_at_the_books_recipe(tmp_path, real_data, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "lenet", "--epochs", "1", "--batch-size", "256", "--lr", "0.9",
                 "--limit-train", "12000", "--device", "cpu", "--out", str(out)])
    assert code == 0
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    printed = capsys.readouterr().out
    assert __import__("re").search(r"loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}\n"
                                   r"\d+\.\d examples/sec on cpu", printed)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("train_loss", "train_acc", "test_acc", "examples_per_sec", "wall_seconds", "device", "epochs"):
        assert summary[key] is not None, key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # 47 steps: a point every 2nd step (at least 20 points a run), then the last batch
    assert len(rows) == 24 and rows[-1]["epoch"] == 1.0 and "test_acc" in rows[-1]
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.9 and config["model"] == "lenet" and config["preset"] == "d2l"


@pytest.mark.slow  # real Fashion-MNIST, 5 epochs: about a minute on 2 cores, so CI=true runs it (tests/suite.py);
@pytest.mark.thorough  # 3 epochs reach 0.657-0.703, too close to the bar (measured 2026-12-06, seed 0)
def test_lenet_learns_real_fashion_mnist(tmp_path, real_data):
    """End to end on the real data: d2l's LeNet recipe must beat 70% test accuracy.

    At lr 0.9 the sigmoid LeNet's test accuracy swings from epoch to epoch (the book's own curve
    does too), so the run's best evaluation is what must clear 70%.
    """
    out = tmp_path / "lenet"
    assert main(["train", "--model", "lenet", "--epochs", "5", "--batch-size", "256", "--lr", "0.9",
                 "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_test_acc"] > 0.70
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["test_acc"] for r in rows if "test_acc" in r) == summary["best_test_acc"]
    assert summary["train_examples"] == 5 * 60000


def test_evaluate_and_predict_a_checkpoint(tmp_path, tiny_data, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "lenet", "--epochs", "12", "--batch-size", "16", "--lr", "0.5",
                 "--momentum", "0.9", "--data-dir", str(tiny_data), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--data-dir", str(tiny_data)]) == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and "ankle boot" in printed
    assert (out / "confusion.png").stat().st_size > 1000
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert sum(map(sum, evaluation["confusion"])) == 32
    # a dark-on-light RGB photo of class 3's bar, at another size: converted like the dataset
    img = Image.new("RGB", (280, 280), "white")
    img.paste((0, 0, 0), (40, 80, 240, 100))
    img.save(tmp_path / "bar.png")
    assert main(["predict", "--checkpoint", str(out / "checkpoint.pt"), str(tmp_path / "bar.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "bar.png")) and line.count("%") == 3


def test_every_config_field_is_a_flag_of_train_and_sweep():
    """Flags are generated from TrainConfig: a field added to the config is a flag at once."""
    from dataclasses import fields

    from alexnet_lab.cli import build_parser, train
    from alexnet_lab.cli.options import training_overrides

    settable = {f.name for f in fields(TrainConfig)} - {"preset"}  # --preset picks the named config
    for command in ("train", "sweep"):
        assert set(training_overrides(build_parser().parse_args([command]))) == settable
    args = build_parser().parse_args(["train", "--preset", "fast", "--nesterov", "--no-channels-last",
                                      "--warmup-frac", "0.3", "--init", "default", "--log-points-per-epoch",
                                      "2", "--seed", "0", "--data-dir", "d"])
    config = train.config_from_args(args)
    assert (config.nesterov, config.channels_last, config.warmup_frac, config.init) == (True, False, 0.3, "default")
    assert (config.log_points_per_epoch, config.seed, config.data_dir, config.lr) == (2, 0, "d", 0.02)
    assert TrainConfig.resumable_fields() == ("epochs", "device", "ddp_timeout", "checkpoint_every", "data_dir",
                                            "data_regime")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--log-points-per-epoch", "0"])


def test_bad_flags_exit_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--batch-size", "0"])
    assert info.value.code == 2
    assert main(["train", "--model", "alexnet", "--resize", "64", "--out", str(tmp_path / "x"),
                 "--limit-train", "8"]) == 2
    assert "smallest size that works is 193" in capsys.readouterr().err


def test_auto_device_prefers_gpu(monkeypatch):
    from alexnet_lab.engine.device import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
