"""Config files (engine/config_file.py) and `alexnet-lab presets`: a real YAML file, a run's own
config.json, precedence preset < file < flags, unknown keys named with the nearest valid one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.engine.config import PRESETS, RECORD_TARGETS, make_config
from alexnet_lab.engine.config_file import read_config_file, resolve_config
from alexnet_lab.errors import UserError


def test_a_preset_printed_as_yaml_reads_back_as_the_same_config(tmp_path, capsys):
    for name in PRESETS:
        assert main(["presets", name]) == 0
        path = tmp_path / f"{name}.yaml"
        path.write_text(capsys.readouterr().out)
        assert yaml.safe_load(path.read_text())["preset"] == name  # plain YAML, readable by any tool
        assert resolve_config(None, read_config_file(path), {}) == make_config(name)


def test_presets_lists_every_preset_with_its_target(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert f"\n{name} " in out
    for name, target in RECORD_TARGETS.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{target:.3f}" in line


def test_flags_override_the_file_and_the_file_overrides_the_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: speedrun\nepochs: 2\nlr: 0.05\n")
    config = resolve_config(None, read_config_file(path), {"lr": 0.3, "epochs": None})
    assert (config.preset, config.epochs, config.lr) == ("speedrun", 2, 0.3)
    assert config.batch_size == PRESETS["speedrun"]["batch_size"]  # from the preset
    other = resolve_config("d2l", read_config_file(path), {})  # --preset beats the file's preset
    assert (other.preset, other.model, other.epochs) == ("d2l", "alexnet", 2)


def test_an_unknown_key_names_the_nearest_valid_one(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("epochs: 2\nlearning_rate: 0.1\nbatchsize: 64\n")
    with pytest.raises(UserError, match="unknown key 'learning_rate'"):
        read_config_file(path)
    path.write_text("batchsize: 64\n")
    with pytest.raises(UserError, match="unknown key 'batchsize'. Did you mean 'batch_size'"):
        read_config_file(path)


@pytest.mark.parametrize("text, message", [("- 1\n- 2\n", "holds a list"), ("epochs: [1\n", "not valid YAML"),
                                           ("epochs: -1\n", "epochs")])
def test_a_bad_file_is_a_user_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        resolve_config(None, read_config_file(path), {})


def test_a_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(UserError, match="alexnet-lab presets NAME"):
        read_config_file(tmp_path / "nope.yaml")


def test_a_runs_own_config_json_repeats_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    data = fakedata.make_dataset(tmp_path / "data", n_train=64, n_test=32)
    first, second = tmp_path / "first", tmp_path / "second"
    with fakedata.one_thread():
        assert main(["train", "--model", "lenet", "--data-dir", str(data), "--epochs", "1", "--batch-size", "32",
                     "--lr", "0.05", "--device", "cpu", "--out", str(first), "--no-report"]) == 0
        assert main(["train", "--config", str(first / "config.json"), "--out", str(second), "--no-report"]) == 0
    saved = [json.loads((run / "config.json").read_text()) for run in (first, second)]
    for config in saved:
        config.pop("resolved")
    assert saved[0] == saved[1]
    assert [json.loads(line)["train_loss"] for line in (second / "metrics.jsonl").read_text().splitlines()] == \
           [json.loads(line)["train_loss"] for line in (first / "metrics.jsonl").read_text().splitlines()]


def test_a_cpu_budget_runs_config_json_is_no_unknown_preset():
    """make run saves its budget under a label (one-epoch-cpu-budget) that is no preset: its complete
    config.json still resolves, to itself; a partial file naming no preset is still refused."""
    saved = make_config("one-epoch", limit_train=2336, time_budget_s=189.3).replace(
        preset="one-epoch-cpu-budget").to_dict()
    config = resolve_config(None, saved, {"seed": 1})
    assert config.preset == "one-epoch-cpu-budget" and config.batch_size == 32 and config.seed == 1
    assert config.replace(seed=0).to_dict() == saved
    with pytest.raises(UserError, match="Unknown preset 'one-epoch-cpu-budget'"):
        resolve_config(None, {"preset": "one-epoch-cpu-budget", "epochs": 2}, {})
    with pytest.raises(UserError, match="Unknown preset 'one-epoch-cpu-budget'"):
        resolve_config("one-epoch-cpu-budget", saved, {})


def test_config_with_resume_is_refused(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--config", str(tmp_path / "c.yaml")]) == 2
    assert "--config cannot be combined with --resume" in capsys.readouterr().err
