"""Config files (YAML or JSON, a run's own config.json as it is: TrainConfig's fields, like timm's `-c cfg.yaml`)
and the precedence preset < file < flags; an unknown key is an error naming the nearest valid one."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

from alexnet_lab.engine.config import PRESETS, TrainConfig, check_setting, make_config
from alexnet_lab.errors import UserError, describe, nearest, printable

# Keys a run's config.json holds beside the recipe: what was resolved at run time, not settings.
RECORD_ONLY_KEYS = ("resolved",)
MAX_BYTES = 1 << 20  # a config is a few hundred bytes; a larger file is not one
# Mappings and lists inside one another: a config is one mapping of single values; a run's config.json
# nests its "resolved" part two deeper (resolved.environment.python). Deeper is no config.
MAX_DEPTH = 5
MAX_NUMBER_CHARS = 4300  # Python's own limit for turning decimal text into a whole number


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_config_file(path: str | os.PathLike) -> dict:
    """The settings in a YAML or JSON file as a dict of TrainConfig fields, each a single value (TrainConfig
    checks the values). What could make reading it unbounded is refused first: more than MAX_BYTES, YAML
    anchors and aliases (a few hundred bytes expand to billions of items), deep nesting, huge numbers."""
    shown = f"--config '{printable(os.fspath(path))}'"
    values = _parse(_read_text(path, shown), Path(path), shown)
    for key in RECORD_ONLY_KEYS:
        values.pop(key, None)
    for key, value in values.items():
        if key not in field_names():
            raise UserError(f"{shown} has an unknown key {describe(key)}.{nearest_key_hint(key, field_names())}")
        if isinstance(value, (dict, list, tuple, set)):
            raise UserError(f"{shown} sets {key} to {describe(value)}: give each setting one value (text, a "
                            "number, true/false or null), as 'alexnet-lab presets NAME' prints them.")
    return values


def _read_text(path: str | os.PathLike, shown: str) -> str:
    """The file's text, at most MAX_BYTES of UTF-8 from a regular file."""
    if "\0" in os.fspath(path):
        raise UserError(f"{shown}: a file name cannot hold a NUL character. Give the config file's name.")
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # a folder, a FIFO, a device: nothing to read, or endless
            raise UserError(f"{shown} is not a config file (a YAML or JSON file of settings).")
        with open(path, "rb") as stream:
            data = stream.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise UserError(f"{shown} is larger than {MAX_BYTES:,} bytes: not a config file (a YAML or JSON "
                            "file of a few settings).")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{shown} does not exist. Write one with 'alexnet-lab presets NAME > "
                        f"{printable(path.name) or 'my.yaml'}', or pass a run's config.json.") from None
    except OSError as exc:
        raise UserError(f"{shown} cannot be read ({exc.strerror}). Check its permissions.") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{shown} is not UTF-8 text ({exc.reason} at byte {exc.start + 1:,}). Save it as "
                        "UTF-8.") from None


def nearest_key_hint(key, valid: list[str]) -> str:
    return nearest(key, valid, "Valid keys")


class _Refused(Exception):
    """What a config file may not hold although its format allows it; the message says where and why."""


def _parse(text: str, path: Path, shown: str) -> dict:
    try:
        values = _parse_json(text) if path.suffix.lower() == ".json" else _parse_yaml(text)
    except _Refused as exc:
        raise UserError(f"{shown} {exc}") from None
    if not isinstance(values, dict):
        raise UserError(f"{shown} holds {describe(values)}, not a mapping of settings: write one 'key: value' "
                        "line per setting.")
    return values


def _too_deep(where: str) -> _Refused:
    return _Refused(f"nests lists or mappings too deeply{where}: a config is one mapping of settings; write "
                    "one 'key: value' line per setting.")


def _too_long(digits: int, where: str) -> _Refused:
    return _Refused(f"holds a number of {digits:,} digits{where}, more than any setting takes: fix that value.")


def _parse_json(text: str):
    def whole_number(digits: str) -> int:
        if len(digits) > MAX_NUMBER_CHARS:
            raise _too_long(len(digits), "")
        return int(digits)

    try:
        return json.loads(text, parse_int=whole_number)
    except json.JSONDecodeError as exc:
        raise _Refused(f"is not valid JSON ({exc}): fix it there, or write the settings as 'key: value' lines "
                       "in a .yaml file.") from None
    except RecursionError:  # json nests with the interpreter's stack: deep enough to run out of it
        raise _too_deep("") from None


def _parse_yaml(text: str):
    import yaml  # YAML is a superset of JSON: .yaml, .yml and anything else go through it

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader, further restricted)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date YAML reads but datetime refuses
        first = printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise _Refused(f"is not valid YAML ({first[:200]}): fix it there; 'alexnet-lab presets NAME' prints a "
                       "valid one.") from None


def _yaml_loader():
    """yaml.SafeLoader refusing anchors, aliases and nesting deeper than MAX_DEPTH as it composes the document
    (before anything is expanded), and whole numbers longer than Python turns into one."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            where = f" (line {event.start_mark.line + 1})"
            if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
                raise _Refused(f"uses a YAML anchor or alias{where}, &name or *name: write each value out in "
                               "full.")
            if self.depth >= MAX_DEPTH:
                raise _too_deep(where)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_yaml_int(self, node):
            if len(node.value) > MAX_NUMBER_CHARS:
                raise _too_long(len(node.value), f" (line {node.start_mark.line + 1})")
            return super().construct_yaml_int(node)

    ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)
    return ConfigLoader


def resolve_config(preset: str | None, file_values: dict | None, flag_values: dict) -> TrainConfig:
    """preset < file < flags. The preset is --preset, else the file's, else d2l; a file's null is the field's
    default (a run's config.json writes an unset --resize so), a flag's None "not given"."""
    file_values = dict(file_values or {})
    name = preset or file_values.pop("preset", None) or "d2l"
    file_values.pop("preset", None)
    check_setting("preset", name)  # text, before it is looked up
    if name not in PRESETS and preset is None and _complete(file_values):  # e.g. make run's one-epoch-cpu-budget
        base = {**make_config("d2l").to_dict(), "preset": name}  # kept as its label
    else:
        base = make_config(name).to_dict()
    values = {**base, **file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    return TrainConfig.from_dict(values)


def _complete(file_values: dict) -> bool:
    """Whether a file sets every setting, as a run's config.json does: its preset is then a label (a CPU
    budget's name is no typo there)."""
    return {f.name for f in TrainConfig.flag_fields()} <= set(file_values)
