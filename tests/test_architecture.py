"""The package's layout is its architecture: data -> models -> engine -> analysis -> reports -> cli, no
upward import, no command importing another command, no function longer than a screen (60 lines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet_lab"
# A module may import its own layer and those below it. errors/files are the base every layer uses;
# d2l (the book's API) and the CLI are the top.
LAYERS = {"errors": 0, "files": 0, "data": 1, "models": 2, "engine": 3, "analysis": 4, "reports": 5,
          "d2l": 6, "cli": 6}
# The CLI's shared helpers; every other cli module is a command, which imports no other command.
CLI_HELPERS = {"options", "running", "progress", "interrupt", "signals"}


def modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        yield rel, ast.parse(path.read_text())


def imported(tree) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alexnet_lab."):
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]  # `from alexnet_lab.cli import x`
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.startswith("alexnet_lab.")]
    return names


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for rel, tree in modules():
        layer = rel.parts[0].removesuffix(".py")
        if layer not in LAYERS:
            continue  # the package's __init__ / __main__
        for name in imported(tree):
            target = name.split(".")[1]
            if target in LAYERS and LAYERS[target] > LAYERS[layer]:
                upward.append(f"{rel} imports {name}")
            elif target in LAYERS and LAYERS[target] == LAYERS[layer] and target != layer \
                    and LAYERS[layer] != 0:
                upward.append(f"{rel} imports {name} (a sibling layer)")
    assert upward == []


def test_no_command_imports_another_command():
    commands = {p.stem for p in (SRC / "cli").glob("*.py")} - CLI_HELPERS - {"__init__"}
    sideways = []
    for rel, tree in modules():
        if rel.parts[0] != "cli":
            continue
        for name in imported(tree):
            parts = name.split(".")
            if len(parts) > 2 and parts[1] == "cli" and parts[2] in commands and parts[2] != rel.stem:
                sideways.append(f"{rel} imports {name}")
    assert sideways == []


def test_only_the_engine_trains_or_claims_a_run_folder():
    """One run lifecycle (engine/run.py `train`): outside engine/ nothing imports `fit` or `claim_run_dir`,
    nor reaches them through an imported engine module (`trainer.fit`)."""
    lifecycle_parts = {"fit", "claim_run_dir"}
    found = []
    for rel, tree in modules():
        if rel.parts[0] == "engine":
            continue
        engine_modules = set()  # the names this file binds to alexnet_lab.engine modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alexnet_lab.engine"):
                found += [f"{rel} imports {node.module}.{a.name}" for a in node.names if a.name in lifecycle_parts]
                engine_modules |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                engine_modules |= {a.asname for a in node.names if a.name.startswith("alexnet_lab.engine") and a.asname}
        found += [f"{rel} uses {node.value.id}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr in lifecycle_parts
                  and isinstance(node.value, ast.Name) and node.value.id in engine_modules]
    assert found == []


def test_no_function_is_longer_than_60_lines():
    long = [f"{rel}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for rel, tree in modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert long == []


@pytest.mark.parametrize("door", ["TrainConfig", "config file", "flag"])
def test_a_settings_one_declaration_is_what_every_door_checks(door, monkeypatch, tmp_path, capsys):
    """A setting is declared once (engine/config.py `setting(...)`): narrow the declared range of one field
    and every way in — the dataclass (and so a checkpoint's config), a config file, a flag — refuses what
    the new range leaves out, with the same message. A side table of ranges anywhere would not follow."""
    import dataclasses
    import types

    from alexnet_lab.cli import main
    from alexnet_lab.engine.config import TrainConfig, make_config
    from alexnet_lab.engine.config_file import resolve_config
    from alexnet_lab.errors import UserError

    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "momentum")
    monkeypatch.setattr(field, "metadata", types.MappingProxyType({**field.metadata, "range": (0, 0.5, "")}))
    make_config("d2l", momentum=0.5)  # the new end is inside
    expected = "--momentum must be in [0, 0.5], got 0.6"
    if door == "flag":
        assert main(["train", "--momentum", "0.6", "--data-dir", str(tmp_path / "none"), "--out",
                     str(tmp_path / "run")]) == 2
        assert expected in capsys.readouterr().err and not (tmp_path / "run").exists()
        return
    with pytest.raises(UserError, match=re.escape(expected)):
        make_config("d2l", momentum=0.6) if door == "TrainConfig" else resolve_config(None, {"momentum": 0.6}, {})
