"""`alexnet-lab compare RUN_DIR...` (exercise 1): the runs' configs and results side by side,
and their training curves overlaid in one figure.
"""

from __future__ import annotations

import json
from pathlib import Path

from alexnet_lab import files
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.errors import UserError
from alexnet_lab.engine.run_dir import make_output_dir, read_run
from alexnet_lab.reports.plots import plot_comparison

NAME = "compare"

# Config keys always shown: the model and the preset a run started from, then the settings declared
# compare="always"; those declared compare="never" (bookkeeping) are hidden; any other key is shown
# only where the runs differ.
ALWAYS = ("model", "preset", *(f.name for f in TrainConfig.flag_fields() if f.metadata["compare"] == "always"))
HIDDEN = tuple(f.name for f in TrainConfig.flag_fields() if f.metadata["compare"] == "never")
RESULTS = (("test acc", "test_acc", "{:.4f}"), ("best test", "best_test_acc", "{:.4f}"),
           ("train acc", "train_acc", "{:.4f}"), ("train loss", "train_loss", "{:.4f}"),
           ("examples/s", "examples_per_sec", "{:,.1f}"), ("train s", "step_seconds", "{:,.1f}"),
           ("epochs done", "epochs", "{:.2f}"))


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders made by train/chapter/sweep")
    parser.add_argument("--labels", default=None, help="comma-separated labels (default: folder names)")
    parser.add_argument("--out", default="runs/compare", help="folder for compare.png/.svg and compare.json")
    parser.add_argument("--title", default="", help="figure title")


def compare_table(runs: list[dict], labels: list[str]) -> tuple[list[str], list[list[str]]]:
    """Rows: config keys (the fixed ones, then those that differ) and results; one column per run."""
    configs = [{k: v for k, v in r["config"].items() if k != "resolved"} for r in runs]
    keys = list(ALWAYS) + sorted(k for k in set().union(*configs)
                                 if k not in ALWAYS and k not in HIDDEN
                                 and len({json.dumps(c.get(k)) for c in configs}) > 1)
    rows = [["run", *labels]]
    rows += [[key, *(str(c.get(key, "-")) for c in configs)] for key in keys]
    for title, key, fmt in RESULTS:
        values = []
        for r in runs:
            value = (r["summary"] or {}).get(key)
            values.append(fmt.format(value) if isinstance(value, (int, float)) else "unfinished" if r["summary"] is None else "-")
        rows.append([title, *values])
    return keys, rows


def format_rows(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def run(args) -> int:
    runs = [read_run(path) for path in args.runs]
    labels = args.labels.split(",") if args.labels else [Path(p).name for p in args.runs]
    if len(labels) != len(runs):
        raise UserError(f"--labels has {len(labels)} labels for {len(runs)} runs; give one per run.")
    _, rows = compare_table(runs, labels)
    print(format_rows(rows))
    out = make_output_dir(args.out)
    plot_comparison([(label, r["metrics"]) for label, r in zip(labels, runs)],
                    [out / "compare.png", out / "compare.svg"], args.title)
    files.write_text(out / "compare.json", json.dumps(
        {"runs": [{"label": label, "path": r["path"], "config": r["config"], "summary": r["summary"]}
                  for label, r in zip(labels, runs)]}, indent=2) + "\n")
    print(f"Curves: {out / 'compare.png'}, {out / 'compare.svg'}; table: {out / 'compare.json'}")
    return 0
