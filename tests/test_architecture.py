"""The package's layout is its architecture: data -> models -> engine -> analysis -> reports -> cli, no
upward import, no command importing another command, no function longer than a screen (60 lines)."""

from __future__ import annotations

import ast
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


def test_no_function_is_longer_than_60_lines():
    long = [f"{rel}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for rel, tree in modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert long == []


@pytest.mark.parametrize("table", ["RANGES", "OPTIONAL"])
def test_settings_have_no_side_table(table):
    assert not [rel for rel, tree in modules() if any(isinstance(n, ast.Name) and n.id == table
                                                      for n in ast.walk(tree))]
