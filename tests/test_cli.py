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
