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
    (["--head-scale", "1e-300"], "--head-scale must be in [0.001, 1000], got 1e-300"),  # its decay / s^2 was / 0.0
    (["--time-budget-s", "1e-300"], "--time-budget-s must be in [0.01, 1e+07], got 1e-300"),
    (["--seed", "9" * 4300], "--seed must be in [0, 4294967295], got a 14285-bit whole number"),
])
def test_out_of_range_numbers_are_refused(data_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out, *flags)) == 2
    err = capsys.readouterr().err
    assert err == f"alexnet-lab train: error: Invalid configuration: {message}.\n"
    assert not out.exists()


@pytest.mark.parametrize("argv, largest", [
    (["train", "--resize", "99999999999999999999"], 2**31 - 1),
    (["summary", "--model", "lenet", "--resize", "99999999999999999999"], 4096),  # --resize's range
    (["profile", "--model", "lenet", "--batch-size", "99999999999999999999"], 2**24),  # --batch-size's range
])
def test_sizes_beyond_int32_are_refused_by_the_parser(tmp_path, capsys, argv, largest):
    """Past the parser they would reach torch and end in a C++ traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"must be at most {largest}, got 99999999999999999999" in capsys.readouterr().err


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


@pytest.mark.parametrize("flag", ["--data-dir", "--out", "--config"])
def test_a_nul_character_in_any_argument_is_one_line_and_writes_nothing(data_dir, tmp_path, capsys, flag):
    """Only a caller in Python can pass one (a shell cannot): os.stat() would raise ValueError on it."""
    out = tmp_path / "r"
    argv = train_args(data_dir, out, flag, str(tmp_path / "a\0b"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet-lab: error: the argument '") and err.count("\n") == 1
    assert err.endswith(" holds a NUL character, which no file name or value can hold: remove it.\n")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--batch-sizes", "32,64,32"], "--batch-sizes names a size twice ('32,64,32')"),
    (["sweep", "--batch-sizes", "0,32"], "each in [1, 16,777,216]; got '0,32'"),
    (["sweep", "--batch-sizes", str(2**24 + 1)], "each in [1, 16,777,216]"),
    (["sweep", "--batch-sizes", ",".join(map(str, range(1, 34)))], "names 33 sizes; a sweep runs at most 32"),
    (["record", "--seed", str(2**32 - 1), "--seeds", "2"],
     "--seeds 2 from --seed 4,294,967,295 goes past the largest seed, 4,294,967,295: give at most 1 seeds"),
])
def test_a_count_past_what_it_counts_is_refused_before_anything_runs(tmp_path, capsys, argv, message):
    assert main([*argv, *(["--out", str(tmp_path / "s")] if argv[0] == "sweep" else [])]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--timeout-minutes", "1e308"], "argument --timeout-minutes: must be at most 100000, got 1e+308"),
    (["export", "--checkpoint", "c.pt", "--out", "m.onnx", "--check-images", "257"],
     "argument --check-images: must be at most 256, got 257"),
    (["visualize", "--checkpoint", "c.pt", "--test-index", "-1"], "argument --test-index: must be at least 0, got -1"),
    (["summary", "--batch-size", str(2**24 + 1)], f"argument --batch-size: must be at most {2**24}"),
    (["bench", "--workers", "100000"], "argument --workers: must be at most 256, got 100000"),
    (["bench", "--warmup", "-1"], "argument --warmup: must be at least 0, got -1"),
    (["chapter", "--budget-minutes", "1e308"], "argument --budget-minutes: must be at most 166667, got 1e+308"),
    (["train", "--lr", "x" * 5000], "argument --lr: expected a number, got '" + "x" * 40 + "'..."),
])
def test_a_count_flag_without_a_bound_of_its_own_is_capped_by_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()[-1]) < 300  # the usage lines above it are argparse's


@pytest.mark.parametrize("maps", ["2000", "100000"])
def test_visualize_maps_beyond_the_widest_convolution_is_refused_naming_it(lenet_checkpoint, tmp_path, capsys, maps):
    """--maps 2000 drew a 231,161-pixel-wide PNG, --maps 100000 ended in a traceback. LeNet's widest
    convolution has 16 channels."""
    out = tmp_path / "pngs"
    assert main(["visualize", "--checkpoint", str(lenet_checkpoint), "--maps", maps, "--out", str(out),
                 "--device", "cpu"]) == 2
    assert f"--maps {int(maps):,} is more than lenet's widest convolution has channels (16): give at most 16." \
        in capsys.readouterr().err
    assert not out.exists()


def test_visualize_test_index_past_the_test_set_is_refused(lenet_checkpoint, tmp_path, capsys):
    out = tmp_path / "pngs"
    assert main(["visualize", "--checkpoint", str(lenet_checkpoint), "--test-index", "64", "--out", str(out),
                 "--device", "cpu"]) == 2
    assert "--test-index 64 is past the last of the run's 64 test images: give 0 to 63." in capsys.readouterr().err
    assert not out.exists()


def test_predict_top_shows_at_most_every_class(lenet_checkpoint, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("L", (28, 28), 128).save(image)
    assert main(["predict", "--checkpoint", str(lenet_checkpoint), "--device", "cpu", "--top", str(2**31 - 1),
                 "--json", str(image)]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert len(top) == 10 and sorted(guess["index"] for guess in top) == list(range(10))
