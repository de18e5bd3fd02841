"""Command-line interface: `alexnet-lab <command>`; one module per command.

User mistakes (`UserError`) print a one-paragraph message, no traceback, and exit with status 2;
a training run stopped by Ctrl-C/SIGTERM prints how to resume and exits with 130/143.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

import alexnet_lab
from alexnet_lab.errors import UserError

# Nothing heavy is imported at module level (torch comes with the commands), so a Ctrl-C while the
# program starts up is caught in main() like any other.

# Each module defines NAME, HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = ["chapter", "summary", "train", "evaluate", "predict", "export", "bench",
            "profile", "sweep", "compare",  # profile, sweep, compare: the chapter's exercises
            "record", "report", "visualize"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one (None means "the preset's value")."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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
                             formatter_class=_HelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every command, and with them torch
    except KeyboardInterrupt:  # Ctrl-C while starting up
        print("alexnet-lab: interrupted.", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (loading data, downloading, ...)
        print(f"alexnet-lab {args.command}: interrupted.", file=sys.stderr)
        return 130


def _run(args) -> int:
    from alexnet_lab.cli.interrupt import Interrupted

    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"alexnet-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"alexnet-lab {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            raise
        # A full disk while writing curves or metrics (checkpoints report their own failure).
        where = f"'{exc.filename}'" if exc.filename else "a file"
        print(f"alexnet-lab {args.command}: error: {exc.strerror} while writing {where}. Free disk "
              "space or choose another folder; checkpoints are written atomically, so the last one is intact.",
              file=sys.stderr)
        return 2
