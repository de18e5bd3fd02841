"""TrainConfig: each setting's type, range, choices and optionality come from its declaration and are
enforced by one check; presets are well-formed named configs; the per-process batch."""

from __future__ import annotations

import itertools
import math
from dataclasses import fields

import pytest

from alexnet_lab import UserError
from alexnet_lab.engine.builders import input_size
from alexnet_lab.engine.config import (PRESETS, TrainConfig, choices_of, field_range, field_types, flag_name,
                                       make_config, per_rank_batch)
from alexnet_lab.models import get_spec, list_models

# The fields whose values are free: a switch, or text checked elsewhere. Every other field declares a
# range or its choices.
FREE_BOOLS = {"nesterov", "channels_last", "compile", "deterministic", "strict", "muon_renorm", "freeze_bn_weights"}
FREE_TEXT = {"data_dir",   # a folder: the data loader says whether it holds the data
             "data",       # fashion-mnist or imagefolder:DIR (check_data_spec, tests/test_sources.py)
             "preset"}     # the name of the preset a config started from (a saved run may name an old one)
# What docs/RELIABILITY.md promises, written out by hand.
PROMISED_RANGES = {"epochs": "(0, 100000]", "lr": "(0, 10000]", "weight_decay": "[0, 10000]",
                   "seed": "[0, 4294967295]", "resize": "[1, 4096]", "momentum": "[0, 1)"}

FIELDS = fields(TrainConfig)
RANGED = [f for f in FIELDS if f.metadata.get("range")]
CHOOSING = [f for f in FIELDS if choices_of(f)]


def with_value(name: str, value) -> TrainConfig:
    """The default config with one field set (the defaults are valid, so only `value` is judged)."""
    return TrainConfig(**{name: value})


def test_config_validation_and_presets():
    assert make_config("d2l") == TrainConfig(preset="d2l")  # the defaults are the book's recipe
    c = make_config("d2l", lr=0.5, epochs=None)
    assert c.lr == 0.5 and c.epochs == 10
    for bad in (dict(epochs=-1), dict(batch_size=0), dict(precision="fp8"), dict(limit_train=0)):
        with pytest.raises(UserError):
            make_config("d2l", **bad)
    with pytest.raises(UserError, match="Unknown configuration keys: colour"):
        TrainConfig.from_dict({"colour": 1})
    with pytest.raises(UserError, match="Unknown preset"):
        make_config("nope")


def test_every_field_declares_its_range_or_choices_unless_its_values_are_free():
    for f in FIELDS:
        kind, _ = field_types()[f.name]
        declared = [key for key in ("range", "choices") if f.metadata.get(key)]
        if f.name in FREE_BOOLS | FREE_TEXT:
            assert not declared and kind is (bool if f.name in FREE_BOOLS else str), f.name
        else:
            assert len(declared) == 1, f"{f.name} declares {declared or 'neither a range nor choices'}"
            assert kind in ((int, float) if declared == ["range"] else (int, str)), f.name


def test_the_declared_ranges_are_those_the_docs_promise():
    for name, span in PROMISED_RANGES.items():
        with pytest.raises(UserError) as refused:
            with_value(name, -1)
        assert str(refused.value) == f"Invalid configuration: {flag_name(name)} must be in {span}, got -1."


@pytest.mark.parametrize("field", RANGED, ids=lambda f: f.name)
def test_a_number_just_outside_its_range_is_refused_and_each_bound_as_its_end_says(field):
    low, high, open_ends = field.metadata["range"]
    kind, _ = field_types()[field.name]
    if kind is int:
        below, above = low - 1, high + 1
    else:
        below, above = math.nextafter(low, -math.inf), math.nextafter(high, math.inf)
    for value in (below, above):
        with pytest.raises(UserError, match=rf"^Invalid configuration: {flag_name(field.name)} must be in "):
            with_value(field.name, value)
    for bound, end in ((low, "low"), (high, "high")):
        if end in open_ends:
            with pytest.raises(UserError, match=f"{flag_name(field.name)} must be in "):
                with_value(field.name, bound)
        else:
            assert getattr(with_value(field.name, bound), field.name) == bound
    middle = (low + high) // 2 if kind is int else (low + high) / 2
    assert getattr(with_value(field.name, middle), field.name) == middle


def test_none_is_accepted_exactly_for_the_fields_annotated_or_none():
    optional = {f.name for f in FIELDS if str(f.type).replace(" ", "").endswith("|None")}
    assert optional == {"resize", "limit_train", "limit_test", "target_accuracy", "time_budget_s", "bn_momentum",
                        "checkpoint_every", "data_dir", "channels", "channels_last"}
    for f in FIELDS:
        if f.name in optional:
            assert getattr(with_value(f.name, None), f.name) is None
        else:
            with pytest.raises(UserError, match=f"{flag_name(f.name)} must be "):
                with_value(f.name, None)


@pytest.mark.parametrize("field", CHOOSING, ids=lambda f: f.name)
def test_a_choice_field_takes_each_of_its_choices_and_refuses_any_other_value(field):
    kind, _ = field_types()[field.name]
    for choice in choices_of(field):
        assert getattr(with_value(field.name, choice), field.name) == choice
    outside = 2 if kind is int else "no-such-choice"
    with pytest.raises(UserError, match=rf"^Invalid configuration: {flag_name(field.name)} must be one of .*, "
                                        rf"got {outside!r}\.$"):
        with_value(field.name, outside)


def test_a_device_may_also_be_one_gpu_of_several():
    assert with_value("device", "cuda:1").device == "cuda:1" and with_value("device", "mps:0").device == "mps:0"
    for device in ("cuda:x", "cuda:", "tpu:0"):
        with pytest.raises(UserError, match=r"--device must be one of auto, cpu, cuda, mps \(or cuda:N\)"):
            with_value("device", device)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_a_value_of_another_type_is_refused(field):
    kind, _ = field_types()[field.name]
    wrong = {int: [1.5, "1", True], float: ["1", True], bool: ["yes", 1], str: [3, b"x"]}[kind]
    for value in wrong:
        with pytest.raises(UserError, match=rf"^Invalid configuration: {flag_name(field.name)} must be "):
            with_value(field.name, value)


def test_a_whole_number_is_a_number():
    assert with_value("epochs", 3).epochs == 3 and with_value("lr", 1).lr == 1


def test_flags_are_the_field_names_with_dashes():
    assert flag_name("log_points_per_epoch") == "--log-points-per-epoch" and flag_name("lr") == "--lr"


def test_bench_and_compare_take_the_settings_declared_for_them():
    from alexnet_lab.cli import bench, compare

    assert set(bench.CONFIG_FLAGS) == {"model", "batch_size", "resize", "seed", "precision", "channels_last",
                                       "compile", "device", "data_dir", "limit_train", "optimizer"}
    assert compare.ALWAYS == ("model", "preset", "epochs", "batch_size", "lr")
    assert set(compare.HIDDEN) == {"data_dir", "log_points_per_epoch", "checkpoint_every", "ddp_timeout",
                                   "data_regime"}


def test_each_process_takes_an_even_share_of_the_global_batch():
    config = make_config("d2l", batch_size=256)
    assert [per_rank_batch(config, n) for n in (1, 2, 4, 256)] == [256, 128, 64, 1]
    with pytest.raises(UserError, match=r"--batch-size 256 \(the global batch\) must be divisible by the "
                                        r"number of processes \(3\)"):
        per_rank_batch(config, 3)


# --- every range keeps the arithmetic finite ---------------------------------------------------------

# Settings multiplied into one another (a group's lr is --lr x --head-scale^2, its decay --weight-decay /
# --head-scale^2, ...): every combination of their ends is walked; every other setting's ends alone.
MULTIPLIED = ("lr", "weight_decay", "head_scale", "bn_bias_lr_scale", "muon_lr")
STEPS_PER_EPOCH = (1, 2**40)  # one batch, and --limit-train's largest at batch 1
LONGEST_RUN_S = 1e7  # --time-budget-s's largest: the clock the schedule reads runs at most this long


def range_ends(name: str) -> tuple:
    """The smallest and the largest value setting `name` takes (an open end: the nearest value inside)."""
    low, high, open_ends = field_range(name)
    kind, _ = field_types()[name]
    inside = (lambda x, way: x + way) if kind is int else (lambda x, way: math.nextafter(x, way * math.inf))
    return (inside(low, 1) if "low" in open_ends else low, inside(high, -1) if "high" in open_ends else high)


def derived_numbers(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """What training computes from `config` before its first step: each parameter group's lr and weight
    decay (speednet: filters, BatchNorm biases, head, rest), the schedule's lr at its landmarks and where
    the clock of a time budget can put it, the curves' spacing and the EMA's first decay."""
    from alexnet_lab.engine.builders import build_scheduler
    from alexnet_lab.engine.config import log_every
    from alexnet_lab.engine.ema import WeightEMA
    from alexnet_lab.engine.optimizers import build_optimizer
    from alexnet_lab.models import build_model

    model = build_model("speednet", in_channels=1)
    optimizer = build_optimizer(config, model)
    total = max(1, math.ceil(config.epochs * steps_per_epoch))
    budget = None if config.time_budget_s is None else (lambda: LONGEST_RUN_S / config.time_budget_s)
    factor = build_scheduler(config, optimizer, total, budget).lr_lambdas[0]
    places = [0, 1, total // 2, total - 1, total, int(config.warmup_frac * total)]
    numbers = [g[key] for g in optimizer.param_groups for key in ("lr", "weight_decay")]
    numbers += [g["lr"] * factor(place) for g in optimizer.param_groups for place in places]
    numbers += [total, log_every(config, steps_per_epoch, total)]
    return numbers + ([WeightEMA(model, config.ema_decay).decay_at(0)] if config.ema_decay else [])


def assert_finite(config: TrainConfig, what: str) -> None:
    for steps in STEPS_PER_EPOCH:
        numbers = derived_numbers(config, steps)
        assert all(math.isfinite(x) and x >= 0 for x in numbers), f"{what}, {steps} steps an epoch: {numbers}"


@pytest.mark.parametrize("schedule", ["constant", "onecycle", "cosine"])
def test_every_combination_of_the_multiplied_settings_ends_keeps_the_arithmetic_finite(schedule):
    base = make_config("d2l", model="speednet", optimizer="muon", schedule=schedule, time_budget_s=60)
    for ends in itertools.product(*(range_ends(name) for name in MULTIPLIED)):
        assert_finite(base.replace(**dict(zip(MULTIPLIED, ends))), str(dict(zip(MULTIPLIED, ends))))


@pytest.mark.parametrize("name", [f.name for f in RANGED if f.name not in MULTIPLIED])
def test_each_end_of_every_other_numeric_setting_keeps_the_arithmetic_finite(name):
    base = make_config("d2l", model="speednet", optimizer="muon", schedule="onecycle", head_scale=1e-3,
                       weight_decay=1e4, time_budget_s=60)
    for end in range_ends(name):
        assert_finite(base.replace(**{name: end}), f"{name}={end}")


def test_the_smallest_head_scale_once_divided_by_zero():
    """--head-scale 1e-300 squared is 0.0 in floating point: the head's weight decay / s^2 raised
    ZeroDivisionError; its range now starts at 1e-3."""
    assert 1e-300 ** 2 == 0.0
    with pytest.raises(UserError, match=r"--head-scale must be in \[0.001, 1000\], got 1e-300"):
        with_value("head_scale", 1e-300)


# --- --augment: the kinds ---------------------------------------------------------------------------

def parsed_augment(*argv: str) -> str:
    """The config `train` resolves from `argv` (the parser and the resolution `train` uses)."""
    from alexnet_lab.cli import build_parser
    from alexnet_lab.cli.options import config_from_args

    args = build_parser().parse_args(["train", *argv])
    return config_from_args(args).augment


def test_the_augment_flag_names_kinds_and_alone_means_the_models_own():
    assert parsed_augment() == "none"
    assert parsed_augment("--augment", "translate") == "translate"
    assert parsed_augment("--augment", "translate+flip") == "flip+translate"  # any order, one spelling
    assert parsed_augment("--augment", "flip,translate,flip") == "flip+translate"
    assert parsed_augment("--augment") == "flip+translate+jitter"
    assert parsed_augment("--model", "alexnet-2012", "--channels", "3", "--augment") == "crop+flip+lighting"
    assert parsed_augment("--preset", "best") == "flip+translate+jitter"
    assert parsed_augment("--preset", "best", "--no-augment") == "none"
    assert parsed_augment("--preset", "best", "--augment", "none") == "none"


@pytest.mark.parametrize("value", ["rotate", "flip+rotate", "", "none+flip", "Flip"])
def test_an_unknown_kind_of_augmentation_is_refused_with_the_kinds(value, capsys):
    with pytest.raises(SystemExit):
        parsed_augment("--augment", value)
    assert (f"argument --augment: must be one of none or kinds joined by '+' (crop, flip, altflip, translate, jitter, "
            f"lighting; e.g. flip+translate), got {value!r}.") in capsys.readouterr().err
    with pytest.raises(UserError, match=r"^Invalid configuration: --augment must be one of none or kinds"):
        with_value("augment", value)


def test_augment_true_or_false_as_older_versions_saved_it_still_loads():
    """Configs, config files and checkpoints of older versions hold the switch: true means the kinds it
    turned on for the model, false none."""
    from alexnet_lab.engine.config_file import resolve_config

    assert TrainConfig.from_dict({"augment": True}).augment == "flip+translate+jitter"
    assert TrainConfig.from_dict({"augment": False}).augment == "none"
    assert TrainConfig.from_dict({"model": "alexnet-2012", "channels": 3, "augment": True}).augment == \
        "crop+flip+lighting"
    assert make_config("speedrun", augment=True).augment == "flip+translate+jitter"
    assert resolve_config(None, {"model": "lenet", "augment": True}, {}).augment == "flip+translate+jitter"


def test_a_checkpoint_and_a_run_config_with_the_old_switch_pass_their_schema():
    from alexnet_lab.engine.schema import check_checkpoint, check_run_config
    from alexnet_lab.models import build_model

    payload = {"model_name": "lenet", "model_state": build_model("lenet").state_dict(),
               "config": {**make_config("d2l", model="lenet").to_dict(), "augment": True}}
    assert check_checkpoint(payload, "old.pt").augment == "flip+translate+jitter"
    payload["config"]["augment"] = False
    assert check_checkpoint(payload, "old.pt").augment == "none"
    run = check_run_config({"model": "alexnet-2012", "augment": True}, "config.json")
    assert run["augment"] == "crop+flip+lighting"  # what `compare` and the report show


# --- presets ---------------------------------------------------------------------------------------

def test_fast_preset_is_the_chapters_alexnet_at_224():
    config = make_config("fast")
    assert config.model == "alexnet" and input_size(config) == 224 and config.epochs <= 2
    assert config.precision == "auto" and config.channels_last is None  # both measured (engine/numerics.py)
    d2l = make_config("d2l")
    assert d2l.precision == "fp32" and d2l.channels_last is False  # the book's recipe stays fp32 NCHW


def test_one_epoch_preset_is_fast_in_one_epoch_at_batch_32():
    """What docs/RECORDS.md claims: the chapter's AlexNet and the `fast` recipe (peak lr 0.02 too);
    only the batch, the length and the curve's points changed."""
    fast, one = make_config("fast").to_dict(), make_config("one-epoch").to_dict()
    changed = {k for k in fast if fast[k] != one[k]}
    assert changed == {"epochs", "batch_size", "log_points_per_epoch", "preset"} and one["lr"] == 0.02
    assert (one["epochs"], one["batch_size"], one["model"]) == (1, 32, "alexnet")


def test_speedrun_preset_uses_a_registered_model():
    config = make_config("speedrun")
    assert config.model in list_models() and get_spec(config.model).input_size == 28
    assert set(PRESETS) >= {"d2l", "fast", "speedrun"}


def test_best_preset_is_fmnist_net_and_trains(tmp_path):
    from alexnet_lab.engine.trainer import fit
    from fakedata import synthetic_splits

    config = make_config("best", epochs=1, batch_size=16, device="cpu", precision="fp32")
    assert config.model == "fmnist-net" and config.augment
    summary = fit(config, splits=synthetic_splits())
    assert summary["steps"] == 4 and summary["epochs"] == pytest.approx(1.0)
    assert math.isfinite(summary["train_loss"])
    assert summary["test_acc"] * 32 == round(summary["test_acc"] * 32)  # a count of the 32 test images
