"""`alexnet-lab report RUN_DIR [RUN_DIR...]`: one self-contained report.html for a run (or comparing
several): recipe, curves, results beside the book's, per-class accuracy, mistakes, filters, feature maps.
"""

from __future__ import annotations

from alexnet_lab.cli.options import add_data, add_device
from alexnet_lab.reports.report import build_report

NAME = "report"


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders made by train/chapter")
    parser.add_argument("--out", default=None,
                        help="HTML file to write (default: RUN_DIR/report.html; for several runs "
                             "runs/compare/report.html); an existing file other than an earlier report "
                             "needs --force, and a run's own files are never overwritten")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    add_device(parser)
    add_data(parser)


def run(args) -> int:
    path = build_report(args.runs, args.out, device=args.device or "auto", data_dir=args.data_dir,
                        force=args.force)
    print(f"Report: {path}")
    return 0
