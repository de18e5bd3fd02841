"""The run report: one self-contained report.html (figures embedded, no network) telling a run's
whole story, or comparing several runs; built from the run folder alone (plus the few test images it shows).

Reads config.json, metrics.jsonl, summary.json, predictions.csv (the run's final test: nothing is
tested again) and checkpoint.pt; what a run lacks (interrupted, resumed, trained with --limit-*) is
said in the page, never a crash.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import resources
from pathlib import Path

import jinja2

import alexnet_lab
from alexnet_lab.reports.learned import figure_uri, learned_sections
from alexnet_lab.reports.plots import plot_comparison, plot_curves
from alexnet_lab import files
from alexnet_lab.engine.run_dir import make_output_dir, read_run
from alexnet_lab.errors import printable

FULL_TRAIN, FULL_TEST = 60_000, 10_000
# The book's printout for its d2l AlexNet run (10 epochs, lr 0.01, batch 128, 224x224, one V100).
BOOK_D2L = {"train_loss": 0.331, "train_acc": 0.878, "test_acc": 0.883, "examples_per_sec": 3941.8,
            "device": "cuda:0 (a V100)"}
RESULTS = (("train loss", "train_loss", "{:.3f}"), ("train acc", "train_acc", "{:.3f}"),
           ("test acc", "test_acc", "{:.3f}"), ("best test acc", "best_test_acc", "{:.3f}"),
           ("examples/sec", "examples_per_sec", "{:,.1f}"), ("epochs done", "epochs", "{:.2f}"),
           ("steps", "steps", "{:,}"), ("training time (s)", "step_seconds", "{:,.1f}"),
           ("wall clock (s)", "wall_seconds", "{:,.1f}"))


def _fmt(fmt: str, value) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and value == value else "–"


def run_status(run: dict, path: Path) -> list[str]:
    """Sentences on how far the run got and what it was trained on."""
    config, summary, metrics = run["config"], run["summary"], run["metrics"]
    resolved = config.get("resolved", {})
    total = resolved.get("total_steps")
    notes = []
    if summary is not None:
        done = f"Finished: {summary.get('steps', 0):,} steps, {summary.get('epochs', 0):.2f} epoch(s)"
        if summary.get("reached_target"):
            done += f"; stopped on reaching the target test accuracy {summary.get('target_accuracy')}"
        notes.append(done + ".")
    else:
        step = metrics[-1]["step"] if metrics else 0
        of = f" of {total:,}" if isinstance(total, int) else ""
        resume = (f"Resume it with: alexnet-lab train --resume {path}" if (path / "checkpoint.pt").is_file()
                  else "No checkpoint was written, so it cannot be resumed; start it again.")
        notes.append(f"Unfinished (interrupted, or still running): {step:,}{of} steps logged. {resume}")
    if resolved.get("start_step"):
        notes.append(f"Resumed at step {resolved['start_step']:,} (config.json records the last start).")
    train_n, test_n = resolved.get("train_examples"), resolved.get("test_examples")
    if config.get("data", "fashion-mnist") != "fashion-mnist":  # an image folder: its own sizes
        count = lambda n: f"{n:,}" if isinstance(n, int) else "?"  # noqa: E731
        notes.append(f"Data {config['data']}: {count(train_n)} training and {count(test_n)} test (validation) "
                     "images" + (f" (--limit-train {config['limit_train']})" if config.get("limit_train") else "")
                     + ".")
        return notes
    for verb, noun, n, full, flag in (("Trained", "training", train_n, FULL_TRAIN, "limit_train"),
                                      ("Tested", "test", test_n, FULL_TEST, "limit_test")):
        if not (config.get(flag) or (n and n < full)):
            continue
        n = n or config[flag]
        if config.get("time_budget_s") and flag == "limit_train":  # make run's budget: said in its words
            seen = (summary or {}).get("train_examples")
            notes.append(f"The time budget used the first {n:,} of the {full:,} training images"
                         + (f" and trained on {seen:,} of them." if isinstance(seen, int) and seen < n else "."))
            continue
        how = f" (--{flag.replace('_', '-')} {config[flag]})" if config.get(flag) else " (a smaller data set)"
        notes.append(f"{verb} on the first {n:,} of the {full:,} {noun} images"
                     + ("" if config.get("time_budget_s") else how) + ".")
    return notes


def _is_book_recipe(config: dict) -> bool:
    """The book printed numbers for its AlexNet with the d2l recipe (other models: nothing to set beside)."""
    return config.get("preset") == "d2l" and config.get("model") == "alexnet"


def results_rows(run: dict) -> list[dict]:
    """Final numbers; beside them the book's for the d2l preset (same recipe, 10 epochs on a V100)."""
    summary = run["summary"] or {}
    metrics = run["metrics"]
    last = dict(summary)
    if not summary and metrics:  # unfinished: the last logged point
        train = [r for r in metrics if r.get("train_loss") is not None]  # null: not a number (JSON has no NaN)
        tested = [r for r in metrics if r.get("test_acc") is not None]
        last = {"train_loss": train[-1]["train_loss"] if train else None,
                "train_acc": train[-1].get("train_acc") if train else None,
                "test_acc": tested[-1]["test_acc"] if tested else None,
                "best_test_acc": max((r["test_acc"] for r in tested), default=None),
                "epochs": metrics[-1]["epoch"], "steps": metrics[-1]["step"]}
    book = BOOK_D2L if _is_book_recipe(run["config"]) else {}
    return [{"label": label, "run": _fmt(fmt, last.get(key)),
             "book": _fmt(fmt, book[key]) if key in book else ""} for label, key, fmt in RESULTS]


def run_context(path: Path, *, device: str, data_dir: str | None, with_model: bool = True) -> dict:
    run = read_run(path)
    config = {k: v for k, v in run["config"].items() if k not in ("resolved", "environment")}
    resolved = dict(run["config"].get("resolved", {}))
    machine = resolved.pop("environment", {})
    ctx = {"name": path.name, "path": str(path), "config": config, "resolved": resolved, "machine": machine,
           "status": run_status(run, path), "results": results_rows(run), "summary": run["summary"],
           "book": BOOK_D2L if _is_book_recipe(config) else None, "metrics_count": len(run["metrics"])}
    if run["metrics"]:
        title = f"{config.get('model')} ({config.get('preset')}), {resolved.get('device', '')}"
        ctx["curves_uri"] = figure_uri(lambda t: plot_curves([(config.get("model", ""), run["metrics"])], [t],
                                                             title), fmt="svg")
    if with_model:
        ctx["learned"] = learned_sections(path, run["summary"], device=device, data_dir=data_dir)
    ctx["run"] = run
    return ctx


def _environment() -> dict:
    return {"alexnet-lab": alexnet_lab.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _shown(value):
    """Every value the page shows: a name's undecodable bytes and control characters escaped (a class
    folder named b'c\\xfe' shows as c\\xfe), as the terminal shows them; str.isprintable first, for speed
    on the figures' data URIs."""
    return printable(value) if isinstance(value, str) and not value.isprintable() else value


def render(context: dict) -> str:
    template_text = resources.files("alexnet_lab.reports").joinpath("report.html.j2").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, trim_blocks=True,  # absent keys are falsy: sections skip
                             lstrip_blocks=True, finalize=_shown)
    return env.from_string(template_text).render(**context)


GENERATOR = '<meta name="generator" content="alexnet-lab report">'  # in report.html.j2: marks our pages
RUN_FILES = ("checkpoint.pt", "best.pt", "config.json", "metrics.jsonl", "summary.json", "predictions.csv")


def is_report(path: Path) -> bool:
    """Whether `path` is a regular file holding a page this module wrote (so it may be replaced)."""
    return GENERATOR.encode() in files.head(path, 2048)


def check_report_out(out: Path, run_paths: list[Path], force: bool) -> None:
    """The page never lands on a run's own files (even with --force), nor on another existing file
    unless it is an earlier report or --force is given; inside a run folder only on an earlier report."""
    inputs = [p / name for p in run_paths for name in RUN_FILES]
    files.check_own_output(out, is_report, force=force, inputs=tuple(inputs))


def build_report(run_dirs, out: str | os.PathLike | None = None, *, device: str = "auto",
                 data_dir: str | None = None, force: bool = False) -> Path:
    """Write report.html for one run (default: inside it) or for several (default: runs/compare/).
    An existing file other than an earlier report is replaced only with `force`."""
    paths = [Path(p) for p in run_dirs]
    if out is None:
        out = paths[0] / "report.html" if len(paths) == 1 else Path("runs/compare/report.html")
    out = Path(out)
    check_report_out(out, paths, force)  # before the work: a refused --out costs nothing
    runs = [run_context(p, device=device, data_dir=data_dir) for p in paths]
    context = {"runs": runs, "environment": _environment(), "title": _title(runs)}
    if len(runs) > 1:
        context["comparison_uri"] = figure_uri(lambda t: plot_comparison(
            [(r["name"], r["run"]["metrics"]) for r in runs], [t]), fmt="svg")
    make_output_dir(out.parent, "--out's folder")
    return files.write_text(out, render(context))


def _title(runs: list[dict]) -> str:
    if len(runs) == 1:
        c = runs[0]["config"]
        return f"{runs[0]['name']}: {c.get('model')} ({c.get('preset')})"
    return "Comparison of " + ", ".join(r["name"] for r in runs)
