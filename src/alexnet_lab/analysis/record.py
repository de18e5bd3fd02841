"""`record`: a preset's time to its target test accuracy over several seeds, airbench style.

The preset runs N times in one process, after one short untimed warm-up on the same data. Per seed
the clock is `fit`'s wall clock: from the first training step to the end of the last test
evaluation (test-time augmentation included), data already in memory, model building excluded;
any `torch.compile` time falls inside it. The record is the mean over seeds; min and max are
reported beside it, with the fraction of seeds that reached the target. Beside the time, units that
travel between machines: the training images to the target and the training FLOPs (images x the
model's forward + backward FLOPs per image, as `profile` and `bench` count them).

A candidate (`record --candidate`) is a preset with settings over it, `PRESET:key=value,...`
(`speedrun-94:epochs=6.5,label_smoothing=0.2`); several are timed in turn in one process, each one
as a record of its own (warm-up, seeds, statistics), to compare recipes.
"""

from __future__ import annotations

import difflib
import statistics
import time
from typing import Callable

from alexnet_lab.analysis.bench import flops_per_example
from alexnet_lab.analysis.machine import describe_machine
from alexnet_lab.engine.config import PRESETS, RECORD_TARGETS, TrainConfig, check_setting, field_types, preset_names
from alexnet_lab.engine.config_file import nearest_key_hint, resolve_config
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.builders import Splits, input_size, model_options, splits_for, stored_size
from alexnet_lab.engine.run import train as train_once
from alexnet_lab.errors import UserError

WARMUP_TRAIN_EXAMPLES = 2048  # enough steps for allocators, oneDNN/cuDNN plans and compilation
WARMUP_TEST_EXAMPLES = 512


def target_of(config: TrainConfig) -> float:
    """The test accuracy a record run is judged against: --target-accuracy, else the preset's rung."""
    if config.target_accuracy is not None:
        return config.target_accuracy
    if config.preset in RECORD_TARGETS:
        return RECORD_TARGETS[config.preset]
    raise UserError(f"Preset '{config.preset}' has no record target: pass --target-accuracy, or use one "
                    f"of the ladder's presets ({', '.join(RECORD_TARGETS)}).")


def warmup_splits(splits: Splits) -> Splits:
    """The first examples of the record's own data (its classes kept: the warm-up builds the same model)."""
    return splits.head(WARMUP_TRAIN_EXAMPLES, WARMUP_TEST_EXAMPLES)


def seed_result(seed: int, summary: dict, target: float, flops_per_image: int) -> dict:
    """One seed's row. Time to target: the evaluation that first reached it when the run evaluated
    along the way (--target-accuracy), else the whole run's wall clock if its final accuracy did.
    Images: the training images the run saw, which is to the target as the time is (a run with
    --target-accuracy stops at it); FLOPs: those images x `flops_per_image` (forward + backward)."""
    acc = summary["test_acc"]
    reached = acc >= target or summary.get("time_to_target_s") is not None
    time_to_target = summary.get("time_to_target_s") or (summary["wall_seconds"] if reached else None)
    images = summary["train_examples"]
    return {"seed": seed, "test_acc": acc, "wall_seconds": summary["wall_seconds"],
            "time_to_target_s": time_to_target, "reached": reached, "images": images,
            "flops": images * flops_per_image}


def statistics_of(rows: list[dict]) -> dict:
    """Mean, min and max over the seeds; a seed that missed the target counts its whole run."""
    accs = [r["test_acc"] for r in rows]
    times = [r["time_to_target_s"] if r["reached"] else r["wall_seconds"] for r in rows]
    return {"mean_acc": statistics.fmean(accs), "min_acc": min(accs), "max_acc": max(accs),
            "std_acc": statistics.pstdev(accs),
            "mean_time_s": statistics.fmean(times), "min_time_s": min(times), "max_time_s": max(times),
            "mean_images": statistics.fmean(r["images"] for r in rows),
            "mean_flops": statistics.fmean(r["flops"] for r in rows),
            "reached": sum(r["reached"] for r in rows) / len(rows)}


def run_record(config: TrainConfig, seeds: int, *, target: float | None = None, splits: Splits | None = None,
               train: Callable[..., dict] = train_once, on_seed: Callable[[dict], None] | None = None) -> dict:
    """Warm up once, then train `config` with seeds config.seed .. config.seed + seeds - 1.

    `target` defaults to `target_of(config)`. `train` is engine.run.train, without a folder (a test passes a fake one to check
    the statistics on a fake clock).
    """
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}.")
    target = target if target is not None else target_of(config)
    # The config's data (--data, --data-dir, limits), read once: every seed trains on the same images
    # (an image folder's validation split is drawn with the first seed, config.seed).
    splits = splits or splits_for(config)
    device = resolve_device(config.device)
    flops = flops_per_example(config.model, input_size(config), **model_options(splits))
    start = time.perf_counter()
    train(config.replace(seed=(config.seed + 10_000) % 2**32), splits=warmup_splits(splits))  # another seed
    warmup_s = time.perf_counter() - start
    rows = []
    for i in range(seeds):
        seed = config.seed + i
        rows.append(seed_result(seed, train(config.replace(seed=seed), splits=splits), target, flops))
        if on_seed:
            on_seed(rows[-1])
    return {"preset": config.preset, "target": target, "seeds": seeds, "rows": rows,
            "warmup_s": warmup_s, "compile": config.compile, "config": config.to_dict(),
            "train_examples": len(splits.train_images), "test_examples": len(splits.test_images),
            "data": config.data, "data_source": splits.source, "flops_per_image": flops,
            "machine": describe_machine(device), **statistics_of(rows)}


def json_line(result: dict) -> dict:
    """The one-line summary `record --json` prints last."""
    keys = ("preset", "target", "seeds", "mean_acc", "min_acc", "mean_time_s", "max_time_s", "reached",
            "mean_images", "mean_flops", "flops_per_image", "data")
    return {**{k: result[k] for k in keys}, "device": result["machine"]["device"],
            "machine": result["machine"]}


BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def parse_setting(name: str, text: str):
    """TrainConfig field `name`'s value from text, read as its flag reads it: with the flag's own parser
    if it declares one, else the field's type (`X | None`: none or null is None); for a flag that may
    stand alone, true is the flag alone and false its --no- form. A value of the wrong type, range or
    choice raises the field's own UserError."""
    kind, optional = field_types()[name]
    flag = {f.name: f for f in TrainConfig.flag_fields()}[name].metadata.get("flag") or {}
    lowered = text.lower()
    if optional and lowered in ("none", "null"):
        return None
    if "const" in flag and lowered in BOOLEANS:  # the flag's own values: TrainConfig reads them
        return flag["const"] if BOOLEANS[lowered] else flag.get("no", False)
    if "type" in flag:
        value = flag["type"](text)
    elif kind is bool:
        value = BOOLEANS.get(lowered, text)
    elif kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            value = text  # check_setting says which kind of number the field takes
    else:
        value = text
    check_setting(name, value)
    return value


def parse_candidate(text: str) -> tuple[str, dict]:
    """`PRESET:key=value,...` -> (preset, {field: value}): keys are TrainConfig's settings (the flags'
    names with underscores), values read by parse_setting."""
    preset, _, rest = text.partition(":")
    preset = preset.strip()
    if preset not in PRESETS:
        near = difflib.get_close_matches(preset, preset_names(), n=1)
        hint = f"Did you mean '{near[0]}'?" if near else f"Choose one of: {', '.join(preset_names())}."
        raise UserError(f"--candidate '{text}': unknown preset '{preset}'. {hint}")
    names = [f.name for f in TrainConfig.flag_fields()]
    settings: dict = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals:
            raise UserError(f"--candidate '{text}': '{item}' is not key=value (PRESET:key=value,...).")
        if key not in names:
            raise UserError(f"--candidate '{text}': unknown setting '{key}'.{nearest_key_hint(key, names)}")
        if key in settings:
            raise UserError(f"--candidate '{text}': sets '{key}' twice.")
        try:
            settings[key] = parse_setting(key, value)
        except UserError as exc:  # the field's own message, saying which candidate
            raise UserError(f"--candidate '{text}': {exc}") from None
    return preset, settings


def candidate_config(text: str, flag_values: dict | None = None, file_values: dict | None = None) -> TrainConfig:
    """A candidate's config: its preset < --config file < the flags given < its own settings."""
    preset, settings = parse_candidate(text)
    return resolve_config(preset, file_values, flag_values or {}).replace(**settings)


def _data_key(config: TrainConfig) -> tuple:
    """What splits_for reads a config's data with: candidates equal in it share one copy of the data."""
    return (config.data, config.data_dir, config.limit_train, config.limit_test, stored_size(config),
            config.channels, config.val_fraction, config.seed, config.strict)


def run_candidates(candidates: list[tuple[str, TrainConfig]], seeds: int, *, splits: Splits | None = None,
                   train: Callable[..., dict] = train_once, on_start: Callable[[str, TrainConfig], None] | None = None,
                   on_seed: Callable[[dict], None] | None = None) -> list[dict]:
    """run_record for each (text, config) in turn, in one process (on_start(text, config) before each);
    each result gains its "candidate" text. `splits` (a test's fake data) replaces every candidate's own."""
    loaded: dict[tuple, Splits] = {}
    results = []
    for text, config in candidates:
        if on_start:
            on_start(text, config)
        if splits is None and _data_key(config) not in loaded:
            loaded[_data_key(config)] = splits_for(config)
        result = run_record(config, seeds, splits=splits or loaded[_data_key(config)], train=train,
                            on_seed=on_seed)
        results.append({"candidate": text, **result})
    return results
