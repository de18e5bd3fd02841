"""The command line's own behaviour: help and version import no command (and so no torch); help
texts show only real defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alexnet_lab.cli import COMMANDS, build_parser

PROBE = ("import sys\nfrom alexnet_lab.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
         "heavy = sorted(m for m in ('torch', 'numpy', 'matplotlib', 'jinja2') if m in sys.modules)\n"
         "print('HEAVY=' + ','.join(heavy))\n")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_help_and_version_import_no_heavy_module(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "HEAVY="


def test_every_command_has_a_module_and_help():
    parser = build_parser()  # imports all of them
    for name in COMMANDS:
        assert parser.parse_args([name, *REQUIRED.get(name, [])]).command == name


REQUIRED = {"evaluate": ["--checkpoint", "x"], "predict": ["--checkpoint", "x", "i.png"],
            "export": ["--checkpoint", "x", "--out", "y"], "report": ["r"], "visualize": ["--checkpoint", "x"],
            "compare": ["a"]}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_shows_no_empty_or_boolean_flag_defaults(name, capsys):
    with pytest.raises(SystemExit):
        build_parser([name]).parse_args([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for junk in ("(default: True)", "(default: False)", "(default: )", "(default: None)"):
        assert junk not in text, (name, junk)


def test_a_run_of_fewer_than_100_steps_says_so_and_how_to_get_more(tmp_path, monkeypatch, capsys):
    import fakedata
    from alexnet_lab.cli import main

    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    data = fakedata.make_dataset(tmp_path / "data", n_train=64, n_test=32)
    with fakedata.one_thread():
        assert main(["train", "--model", "lenet", "--data-dir", str(data), "--epochs", "1", "--batch-size", "32",
                     "--device", "cpu", "--out", str(tmp_path / "r"), "--no-report", "--no-tensorboard"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Note: this run takes only 2 optimizer steps (2 per epoch)" in text
    assert "--epochs 50" in text and "--batch-size 8" in text


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_names_no_flag_the_command_does_not_have(name, capsys):
    parser = build_parser([name])
    with pytest.raises(SystemExit):
        parser.parse_args([name, "--help"])
    text = capsys.readouterr().out
    import re

    offered = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text.split("options:")[0]))  # the usage lines
    mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    assert mentioned - offered - {"--help"} == set(), name
