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
from alexnet_lab.cli import signals
from alexnet_lab.cli.signals import ImmediateExit, Interrupted, StartupSignals
from alexnet_lab.errors import UserError, describe

# Nothing heavy is imported at module level (torch comes with the commands), so main() installs its
# signal handler before torch, numpy or any command is imported.

# Each command is a module cli/<name>.py defining NAME, add_arguments(parser) and run(args) -> int; its
# one-line help is here, so `alexnet-lab --help` and `--version` import no command (and so no torch).
COMMANDS = {
    'chapter': 'the chapter end to end: layer shapes, then train AlexNet (full recipe on a GPU, a budget on CPU)',
    'summary': "print each layer's output shape for a probe input (the chapter's first printout)",
    'train': "train a model (default: the chapter's AlexNet with the book's d2l recipe)",
    'evaluate': "evaluate a checkpoint on its test data (Fashion-MNIST's test set, or the image folder's validation split)",
    'predict': "classify image files (any size/mode; prepared like the model's training data: 28x28 grayscale for Fashion-MNIST, the folder's decoding for image folders)",
    'export': 'export a checkpoint as ONNX (run with onnxruntime), torch.export (.pt2) or safetensors weights, checked against PyTorch',
    'bench': "time the training step of the book's pipeline and of this project's (examples/s, FLOP/s)",
    'profile': 'per-layer FLOPs, parameters, activation/weight memory and arithmetic intensity of a training step',
    'sweep': 'train once per batch size; table and plots of test accuracy, examples/s and peak memory',
    'compare': 'compare finished runs: a table of configs and results, and overlaid training curves',
    'record': "time a preset to its target test accuracy over several seeds (the speed ladder's records)",
    'report': 'write report.html for a run folder (or one page comparing several runs): open it in any browser',
    'visualize': "PNGs of a checkpoint's first-layer filters and of an image's feature maps through each convolution",
    'presets': 'list the presets and their targets (measurements: docs/RECORDS.md), or print one as YAML for train --config',
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one worth saying: not None ("the preset's value"), not an
    on/off switch's True/False (the flag's name says it), not an empty text."""

    def _get_help_string(self, action):
        if action.default in (None, "") or isinstance(action.default, bool) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _split_lines(self, text, width):  # a flag named in a help text is never split at its hyphens
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The parser; only the `commands` given (default: all) are imported and get their flags, so a
    command's parser costs only its own imports."""
    commands = COMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(
        prog="alexnet-lab",
        description="The AlexNet chapter of Dive into Deep Learning: train, inspect and measure AlexNet "
                    "on Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"alexnet-lab {alexnet_lab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in COMMANDS.items():
        cmd = sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter,
                             allow_abbrev=False)  # --data is not an abbreviation of --data-dir
        if name not in commands:
            continue
        module = importlib.import_module(f"alexnet_lab.cli.{name}")
        module.add_arguments(cmd)
        # A command that trains keeps Ctrl-C recorded until training starts (cli/signals.py).
        cmd.set_defaults(run=module.run, keeps_startup_signals=getattr(module, "KEEPS_STARTUP_SIGNALS", False))
        signals.check("while starting up")  # between two imports: a safe point
    return parser


def _named_command(argv: list[str]) -> list[str]:
    """The command `argv` names (its first word that is one), as a list; none for --help/--version."""
    return [word for word in argv if word in COMMANDS][:1]


def _safe_streams() -> None:
    """Make printing never fail on a character the terminal's encoding lacks (PYTHONIOENCODING=ascii,
    LANG=C, a log file): such characters of a class name or a path are written as backslash escapes
    (\\xe9, \\u732b) instead of raising UnicodeEncodeError after the run. The encoding is kept."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (replaced by a caller), closed
            pass


def main(argv: list[str] | None = None) -> int:
    # First of all: from here on Ctrl-C/SIGTERM are recorded, never raised in the middle of an import
    # (see signals.StartupSignals), and acted on at safe points: exit 130/143, no traceback.
    with StartupSignals() as startup:
        _safe_streams()
        try:
            argv = sys.argv[1:] if argv is None else argv
            nul = next((word for word in argv if "\0" in word), None)  # only a Python caller can pass one
            if nul is not None:  # and os.stat() raises on it
                print(f"alexnet-lab: error: the argument {describe(nul)} holds a NUL character, which no file "
                      "name or value can hold: remove it.", file=sys.stderr)
                return 2
            parser = build_parser(_named_command(argv))  # imports that command, and with it torch
            args = parser.parse_args(argv)
            signals.check("while starting up")
        except (Interrupted, ImmediateExit, KeyboardInterrupt) as exc:
            print("alexnet-lab: interrupted.", file=sys.stderr)
            return getattr(exc, "exit_code", 130)
        if not args.keeps_startup_signals:
            startup.release()  # the command handles Ctrl-C itself (KeyboardInterrupt) from here
        startup.announce = True
        try:
            code = _run(args)
        except (KeyboardInterrupt, ImmediateExit) as exc:  # Ctrl-C outside a training loop (loading data, ...)
            print(f"alexnet-lab {args.command}: interrupted.", file=sys.stderr)
            return getattr(exc, "exit_code", 130)
        if code == 0 and signals.pending() is not None:  # a signal after the command's last safe point
            print(f"alexnet-lab {args.command}: interrupted after it had finished.", file=sys.stderr)
            return startup.exit_code
        return code


def _run(args) -> int:
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
