"""Command-line interface: `alexnet-lab <command>`; one module per command.

User mistakes (`UserError`) print a one-paragraph message, no traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import alexnet_lab
from alexnet_lab.errors import UserError

# Each module defines NAME, HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = ["chapter", "summary", "train", "evaluate", "predict", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-lab",
        description="The AlexNet chapter of Dive into Deep Learning: train, inspect and measure AlexNet "
                    "on Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"alexnet-lab {alexnet_lab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"alexnet_lab.cli.{name}")
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"alexnet-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
