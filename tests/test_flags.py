"""`train`'s (and a few other commands') flags as a user types them: a value the parser or the config
refuses is one line naming the flag and its bounds, exit 2, and no run folder; a value at a bound works.
The ranges themselves are declared on TrainConfig (tests/test_config.py).

Tiny synthetic IDX files (tests/fakedata.py), CPU only, offline.
"""

from __future__ import annotations

import json
import math

import pytest

from alexnet_lab.cli import main
from runhelpers import recipe_args, train_args

pytestmark = pytest.mark.usefixtures("offline_cli")


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "argument --epochs: must be positive, got -1.0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["--preset", "fastest"], "argument --preset: invalid choice: 'fastest'"),
    (["--lr", "abc"], "argument --lr: expected a number, got 'abc'"),
])
def test_impossible_flags(data_dir_512, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(recipe_args(data_dir_512, tmp_path / "r") + flags)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "inf"], "--epochs must be a finite number, got inf"),
    (["--epochs", "1e20"], "--epochs must be in (0, 100000], got 1e+20"),
    (["--lr", "1e308"], "--lr must be in (0, 10000], got 1e+308"),
    (["--weight-decay", "1e308"], "--weight-decay must be in [0, 10000], got 1e+308"),
    (["--weight-decay", "-1"], "--weight-decay must be in [0, 10000], got -1"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    (["--seed", "99999999999999999999"], "--seed must be in [0, 4294967295], got 99999999999999999999"),
    (["--resize", "5000"], "--resize must be in [1, 4096], got 5000"),
    (["--momentum", "1"], "--momentum must be in [0, 1), got 1"),
])
def test_out_of_range_numbers_are_refused(data_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out, *flags)) == 2
    err = capsys.readouterr().err
    assert err == f"alexnet-lab train: error: Invalid configuration: {message}.\n"
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["train", "--resize", "99999999999999999999"],
    ["summary", "--model", "lenet", "--input-size", "99999999999999999999"],
    ["profile", "--model", "lenet", "--batch-size", "99999999999999999999"],
])
def test_sizes_beyond_int32_are_refused_by_the_parser(tmp_path, capsys, argv):
    """Past the parser they would reach torch and end in a C++ traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "must be at most 2147483647, got 99999999999999999999" in capsys.readouterr().err


def test_the_largest_seed_trains_with_augmentation(data_dir, tmp_path):
    """The per-batch seeds derived from it must fit in 64 bits (a naive derivation overflows for seeds
    above ~2.8e7 with --augment)."""
    out = tmp_path / "r"
    assert main(train_args(data_dir, out, "--seed", str(2**32 - 1), "--augment")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["train_loss"])
    assert json.loads((out / "config.json").read_text())["seed"] == 2**32 - 1


def test_resize_too_small_names_the_smallest_size(data_dir_512, tmp_path, capsys):
    args = recipe_args(data_dir_512, tmp_path / "r", "--resize", "32")
    args[args.index("lenet")] = "alexnet"
    assert main(args) == 2
    err = capsys.readouterr().err
    # Independent reference, by hand: conv 11/4 pad 1, then three 3/2 max-pools (the 5x5 and 3x3 convs
    # keep the size); the last pool must leave 5x5 for Linear(6400).
    def side_after_features(s):
        s = (s + 2 - 11) // 4 + 1
        for _ in range(3):
            s = (s - 3) // 2 + 1
        return s
    smallest = next(s for s in range(8, 513) if side_after_features(s) == 5)
    assert smallest == 193
    assert "does not fit model 'alexnet'" in err and f"The smallest size that works is {smallest}." in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("top", ["-1", "0"])
def test_predict_top_must_be_positive(tmp_path, capsys, top):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--checkpoint", str(tmp_path / "c.pt"), "--top", top, str(tmp_path / "x.png")])
    assert exit_.value.code == 2
    assert f"argument --top: must be at least 1, got {top}" in capsys.readouterr().err
