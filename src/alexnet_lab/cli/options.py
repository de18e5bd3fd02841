"""Command-line flags generated from `TrainConfig`'s fields, so that each setting is described once.

A field declared with `engine.config.setting(...)` is the flag `--field-name` on every command that
takes the training recipe (train, sweep); other commands pick single fields with `add_config_flag`.
"""

from __future__ import annotations

import argparse
import types
import typing

from alexnet_lab.engine.config import TrainConfig, preset_names

GROUPS = {"recipe": "recipe (overrides the preset)", "numerics": "numerics", "data": "data and run"}


MAX_INT = 2**31 - 1

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > MAX_INT:  # sizes and counts beyond int32 only overflow inside torch (a C++ traceback)
        raise argparse.ArgumentTypeError(f"must be at most {MAX_INT}, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _value_type(annotation) -> type:
    """int for `int`, `int | None` and `Optional[int]`; likewise float, str, bool."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def add_config_flag(container, name: str, **overrides) -> None:
    """Add the flag of TrainConfig field `name` to a parser or argument group: help, type and choices
    from the field's metadata; default None (= the preset's value). `overrides` go to add_argument."""
    field = {f.name: f for f in TrainConfig.flag_fields()}[name]
    meta = field.metadata
    kind = _value_type(typing.get_type_hints(TrainConfig)[name])
    kwargs: dict = {"default": None, "help": meta["help"]}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = {int: positive_int, float: positive_float}[kind] if meta["positive"] else kind
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        if choices:
            kwargs["choices"] = choices
    kwargs.update(overrides)
    container.add_argument(flag_name(name), **kwargs)


def add_config_flags(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Flags for the TrainConfig fields `names` (default: every flag field), in argument groups."""
    groups: dict[str | None, object] = {None: parser}
    for field in TrainConfig.flag_fields():
        if names is not None and field.name not in names:
            continue
        group = field.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(GROUPS[group])
        extra = {"help": field.metadata["help"] + " (default: the preset's)"} if field.name == "model" else {}
        add_config_flag(groups[group], field.name, **extra)


def add_preset(parser: argparse.ArgumentParser, default: str = "d2l", what: str = "the book's recipe") -> None:
    """--preset; None when not given (so `train --resume` can refuse a given one): use `args.preset or default`."""
    parser.add_argument("--preset", choices=preset_names(), default=None,
                        help=f"named recipe; the flags below override it (default: {default}, {what})")


def add_model(parser: argparse.ArgumentParser, default: str | None = "alexnet") -> None:
    add_config_flag(parser, "model", default=default)


def add_data(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser, "data_dir")


def add_data_source(parser) -> None:
    """--data and how an image folder is read (--channels, --val-fraction, --strict)."""
    for name in ("data", "channels", "val_fraction", "strict"):
        add_config_flag(parser, name)


def add_adaptation(parser: argparse.ArgumentParser) -> None:
    """The data a model is built for, as `train` adapts it (summary, profile)."""
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="input channels (default: the model's, 1 except for alexnet-2012)")
    parser.add_argument("--num-classes", type=positive_int, default=None,
                        help="output classes (default: the model's, 10 except for alexnet-2012's 1000)")


def model_for_args(args: argparse.Namespace):
    """(model built for --channels/--num-classes, its input channels)."""
    from alexnet_lab.models import build_model, get_spec

    channels = args.channels or get_spec(args.model).in_channels
    kwargs = {"in_channels": channels} | ({"num_classes": args.num_classes} if args.num_classes else {})
    return build_model(args.model, **kwargs), channels


def add_device(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser, "device")


def add_training(parser: argparse.ArgumentParser) -> None:
    """--preset and a flag for every TrainConfig setting; unset flags keep the preset's value."""
    add_preset(parser)
    add_config_flags(parser)


def training_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given as flags (None: not given, the preset's value stands)."""
    return {f.name: getattr(args, f.name, None) for f in TrainConfig.flag_fields()}
