"""Config files (YAML or JSON, a run's own config.json as it is) and the precedence preset < file < flags.

Like timm's `-c cfg.yaml` and LightningCLI's `--config`: the file holds TrainConfig fields; flags
given on the command line override it; an unknown key is an error naming the nearest valid one.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import fields
from pathlib import Path

from alexnet_lab.engine.config import PRESETS, TrainConfig, make_config, preset_names
from alexnet_lab.errors import UserError

# Keys a run's config.json holds beside the recipe: what was resolved at run time, not settings.
RECORD_ONLY_KEYS = ("resolved",)
MAX_BYTES = 1 << 20  # a config is a few hundred bytes; a larger file is not one


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_config_file(path: str | os.PathLike) -> dict:
    """The settings in a YAML or JSON file as a dict of TrainConfig fields (keys checked, values not
    yet: TrainConfig checks them with the rest)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES or not path.is_file():
            raise UserError(f"--config '{path}' is not a config file (a YAML or JSON file of settings).")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--config '{path}' does not exist. Write one with 'alexnet-lab presets NAME > "
                        f"{path.name or 'my.yaml'}', or pass a run's config.json.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--config '{path}' cannot be read ({exc}).") from None
    values = _parse(text, path)
    for key in RECORD_ONLY_KEYS:
        values.pop(key, None)
    unknown = [key for key in values if key not in field_names()]
    if unknown:
        hint = nearest_key_hint(unknown[0], field_names())
        raise UserError(f"--config '{path}' has an unknown key '{unknown[0]}'.{hint}")
    return values


def nearest_key_hint(key, valid: list[str]) -> str:
    """' Did you mean 'X'?' for the valid key nearest to an unknown `key` (difflib), else the valid keys."""
    near = difflib.get_close_matches(str(key), valid, n=1)
    return f" Did you mean '{near[0]}'?" if near else f" Valid keys: {', '.join(valid)}."


def _parse(text: str, path: Path) -> dict:
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--config '{path}' is not valid JSON ({exc}).") from None
    else:
        import yaml  # YAML is a superset of JSON: .yaml, .yml and anything else go through it

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"--config '{path}' is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(values, dict):
        raise UserError(f"--config '{path}' holds a {type(values).__name__}, not a mapping of settings "
                        "(key: value lines).")
    return values


def resolve_config(preset: str | None, file_values: dict | None, flag_values: dict) -> TrainConfig:
    """preset < file < flags. The preset is --preset, else the file's `preset`, else d2l; a file's
    null means the field's default (as a run's config.json writes an unset --resize); a flag's None
    means "not given"."""
    file_values = dict(file_values or {})
    name = preset or file_values.pop("preset", None) or "d2l"
    file_values.pop("preset", None)
    if name in PRESETS:
        base = make_config(name).to_dict()
    elif preset is None and _complete(file_values):  # e.g. make run's one-epoch-cpu-budget: kept as its label
        base = {**make_config("d2l").to_dict(), "preset": name}
    else:
        raise UserError(f"Unknown preset '{name}'. Choose one of: {', '.join(preset_names())}.")
    values = {**base, **file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    return TrainConfig.from_dict(values)


def _complete(file_values: dict) -> bool:
    """Whether a file sets every setting, as a run's config.json does: its preset names where the recipe
    came from and decides nothing, so a name that is no preset (a CPU budget's) is no typo there."""
    return {f.name for f in TrainConfig.flag_fields()} <= set(file_values)
