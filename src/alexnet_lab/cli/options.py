"""Command-line flags generated from `TrainConfig`'s declarations (engine.config.setting), so each setting is
described once: every one on the commands that take a recipe, single ones elsewhere (`add_config_flag`)."""

from __future__ import annotations

import argparse

from alexnet_lab.engine.config import TrainConfig, choices_of, field_range, field_types, flag_name, preset_names
from alexnet_lab.errors import UserError, describe

GROUPS = {"recipe": "recipe (overrides the preset)", "numerics": "numerics", "data": "data and run"}
MAX_INT = 2**31 - 1  # counts and sizes beyond int32 only overflow inside torch (a C++ traceback)


def whole_number(low: int | None = None, high: int | None = None):
    """An argparse type: a whole number, in [low, high] where given."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also a number of more than 4,300 digits, which int() refuses
            raise argparse.ArgumentTypeError(f"expected a whole number, got {describe(text)}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {describe(value)}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {describe(value)}")
        return value
    convert.__name__ = "whole_number"
    return convert


positive_int = whole_number(1, MAX_INT)


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {describe(text)}") from None


def positive_number(high: float | None = None):
    """An argparse type: a number above 0, and at most `high` where given."""
    def convert(text: str) -> float:
        value = number(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}, got {value:g}")
        return value
    convert.__name__ = "positive_number"
    return convert


positive_float = positive_number()


def like_setting(name: str):
    """An argparse type: a whole number inside TrainConfig field `name`'s range (checked as it is parsed)."""
    low, high, _ = field_range(name)
    return whole_number(low, high)


def _parse_type(kind: type, value_range: tuple | None):
    """What argparse converts a flag's text with: positive where the declared range starts at 1 or above 0 (so
    `--epochs -1` is refused as it is parsed); the rest of the range is TrainConfig's to check."""
    low, _, open_ends = value_range or (None, None, "")
    if kind is int:
        return positive_int if low is not None and low >= 1 else whole_number()
    if kind is float:
        return positive_float if low is not None and (low > 0 or (low == 0 and "low" in open_ends)) else number
    return kind


def add_config_flag(container, name: str, **overrides) -> None:
    """Add the flag of TrainConfig field `name` to a parser or argument group: help, type and choices
    from the field's declaration; default None (= the preset's value). `overrides` go to add_argument."""
    field = {f.name: f for f in TrainConfig.flag_fields()}[name]
    kind, _ = field_types()[name]
    kwargs: dict = {"default": None, "help": field.metadata["help"]}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = _parse_type(kind, field.metadata["range"])
        choices = choices_of(field)
        if choices:
            kwargs["choices"] = choices
    flag = dict(field.metadata["flag"])  # the setting's own argparse options (engine.config.setting)
    negative = flag.pop("no", None)
    if "type" in flag:
        flag["type"] = _argparse_type(flag["type"], flag_name(name))
    kwargs.update(flag)
    kwargs.update(overrides)
    container.add_argument(flag_name(name), **kwargs)
    if negative is not None:
        container.add_argument("--no-" + flag_name(name)[2:], dest=name, action="store_const", const=negative,
                               default=None, help=f"the same as {flag_name(name)} {negative}")


def _argparse_type(parse, flag: str):
    """A setting's parse function (raising UserError) as an argparse type."""
    def convert(text: str):
        try:
            return parse(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"Invalid configuration: {flag} ")) from None
    convert.__name__ = parse.__name__
    return convert


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


def add_probe(parser: argparse.ArgumentParser) -> None:
    """The probe input of summary and profile: train's --batch-size (here 1) and --resize,
    refused outside their ranges as they are parsed."""
    add_config_flag(parser, "batch_size", default=1, type=like_setting("batch_size"),
                    help="batch size of the probe (every count is for the whole probe)")
    add_config_flag(parser, "resize", type=like_setting("resize"),
                    help="side of the probe image (default: the model's, 224 for alexnet)")


def add_adaptation(parser: argparse.ArgumentParser) -> None:
    """The data a model is built for, as `train` adapts it (summary, profile)."""
    add_config_flag(parser, "channels", help="input channels (default: the model's, 1 except for alexnet-2012)")
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


def add_training(parser: argparse.ArgumentParser, default: str = "d2l", what: str = "the book's recipe") -> None:
    """--preset, --config and a flag for every TrainConfig setting; unset flags keep the file's, then
    the preset's value."""
    add_preset(parser, default, what)
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="a YAML or JSON file of settings ('alexnet-lab presets NAME' prints one; a run's "
                             "config.json works as is); precedence: preset < file < flags")
    add_config_flags(parser)


def config_from_args(args: argparse.Namespace, default_preset: str = "d2l"):
    """The TrainConfig the command line asks for: --preset (else the file's, else `default_preset`),
    then --config FILE's settings, then the flags given."""
    from alexnet_lab.engine.config_file import read_config_file, resolve_config

    file_values = read_config_file(args.config) if getattr(args, "config", None) else None
    preset = args.preset or (None if file_values and file_values.get("preset") else default_preset)
    return resolve_config(preset, file_values, training_overrides(args))


def training_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given as flags (None: not given, the preset's value stands)."""
    return {f.name: getattr(args, f.name, None) for f in TrainConfig.flag_fields()}
