"""`alexnet-lab evaluate`: test accuracy, per-class accuracy and a confusion matrix of a checkpoint,
measured as its run measured it (precision, TTA, batch), and compared with the run's own number;
with --predictions, every test image's prediction as CSV (the format of a run's predictions.csv)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from alexnet_lab import files
from alexnet_lab.cli.options import add_config_flag, add_data, add_data_source, add_device
from alexnet_lab.engine.checkpoint import class_names, model_kwargs
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.evaluation import checkpoint_test_split, evaluate_checkpoint, run_test_record, why_it_differs
from alexnet_lab.engine.inference import load_trained
from alexnet_lab.errors import UserError, printable
from alexnet_lab.reports.plots import is_own_figure, plot_confusion
from alexnet_lab.engine.run_dir import (PREDICTIONS, PREDICTIONS_HEADERS, check_output_dir, make_output_dir,
                                        predictions_csv, read_run, write_json)

NAME = "evaluate"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a run")
    add_data(parser)
    add_data_source(parser)
    add_device(parser)
    add_config_flag(parser, "limit_test", help="use the first N test examples (default: the run's test set)")
    add_config_flag(parser, "tta", help="test-time augmentation (default: the run's, so that the accuracy is "
                                        "the run's own; none to see the model alone)")
    add_config_flag(parser, "precision", help="autocast precision (default: the run's, resolved for this device "
                                              "as training resolved it; fp32 for full precision)")
    parser.add_argument("--out", default=None, help="folder for confusion.png (default: the checkpoint's)")
    parser.add_argument("--predictions", metavar="FILE.csv", default=None,
                        help="also write one row per test image: its file (image folders: the path relative to "
                             "the folder; Fashion-MNIST: the index in the test set), true class, predicted "
                             "class, confidence (the predicted class's softmax probability)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --predictions file, or a confusion.png or evaluation.json that "
                             "evaluate did not write (its own are replaced anyway); never a run's own files")


def test_split(args, config, payload):
    """The run's test split unless told otherwise (--data-dir, --data, --limit-test, ...)."""
    channels = model_kwargs(payload)["in_channels"]  # a model takes only these
    if args.channels is not None and args.channels != channels:
        raise UserError(f"--channels {args.channels} does not fit {args.checkpoint}: its model takes "
                        f"{channels}-channel images. Drop --channels: evaluate reads the data with the "
                        "model's channels.")
    data = {k: getattr(args, k) for k in ("data", "val_fraction", "strict") if getattr(args, k) is not None}
    splits = checkpoint_test_split(config, payload, data_dir=args.data_dir, limit=args.limit_test, **data)
    for note in splits.notes:
        print(note, file=sys.stderr)
    return splits


GENERATOR = "alexnet-lab evaluate"  # evaluation.json's first field: marks the files evaluate may replace


def is_own_evaluation(path: Path) -> bool:
    return f'"generator": "{GENERATOR}"'.encode() in files.head(path, 256)


def is_own_predictions(path: Path) -> bool:
    """An earlier --predictions file; never a run's own predictions.csv (the same format: its final test)."""
    run_file = path.name == PREDICTIONS and files.in_run_folder(path)
    return not run_file and files.head(path, 64).startswith(PREDICTIONS_HEADERS)


def check_outputs(args, out: Path) -> None:
    """Every file evaluate writes, checked before the evaluation (not after it): --out a folder; there
    confusion.png and evaluation.json (an earlier evaluation's are replaced; another file only with
    --force); --predictions (an existing file only with --force); never a run's own files."""
    check_output_dir(out)
    files.check_own_output(out / "confusion.png", is_own_figure, force=args.force, inputs=(args.checkpoint,))
    files.check_own_output(out / "evaluation.json", is_own_evaluation, force=args.force, inputs=(args.checkpoint,))
    if args.predictions is not None:
        files.check_output_file(args.predictions, force=args.force, flag="--predictions",
                                inputs=(args.checkpoint,), own=is_own_predictions)


def run(args) -> int:
    device = resolve_device(args.device or "auto")
    model, run_config, payload = load_trained(args.checkpoint, device)
    names = class_names(payload)
    out = Path(args.out) if args.out is not None else Path(args.checkpoint).parent
    check_outputs(args, out)
    splits = test_split(args, run_config, payload)
    config = run_config.replace(**{k: getattr(args, k) for k in ("tta", "precision") if getattr(args, k)})
    result = evaluate_checkpoint(model, config, splits, device)
    print(f"test acc {result['accuracy']:.4f} ({result['correct']}/{result['examples']}), "
          f"loss {result['loss']:.4f}, model {config.model}, {args.checkpoint}")
    reasons = why_it_differs(payload, run_config, result["settings"], splits)
    print("  " + describe_settings(result["settings"], run_config, same=not reasons))
    record = run_test_record(payload)
    print("  " + compare_with_run(result["accuracy"], record, reasons, the_runs_number(args.checkpoint, record)))
    per_class = print_per_class(result["confusion"], names)
    make_output_dir(out)
    plot_confusion(result["confusion"].numpy(), names, out / "confusion.png",
                   f"{config.model}: test acc {result['accuracy']:.4f}")
    write_json(out / "evaluation.json",
               {"generator": GENERATOR, "checkpoint": printable(str(args.checkpoint)),
                "test_acc": result["accuracy"], "test_loss": result["loss"],
                "examples": result["examples"], "per_class_acc": per_class,
                "confusion": result["confusion"].tolist(), "settings": result["settings"],
                "run_test_acc": record["test_acc"] if record else None, "differs_from_run_because": reasons})
    print(f"Confusion matrix: {out / 'confusion.png'}; numbers: {out / 'evaluation.json'}")
    if args.predictions is not None:
        files.write_bytes(args.predictions, predictions_csv(result, names, splits.test_files))
        print(f"Predictions: {args.predictions} ({result['examples']:,} rows"
              + ("; paths relative to the image folder)" if splits.test_files is not None else ")"))
    return 0


def describe_settings(settings: dict, run_config, same: bool) -> str:
    weights = "the EMA of the weights" if run_config.ema_decay else "the weights"  # what the run tested, and saved
    return (f"measured on {weights} in {settings['precision']} on {settings['device']}, TTA {settings['tta']}, "
            f"test batches of {settings['batch_size']}" + (": as the run measured it" if same else ""))


def the_runs_number(checkpoint, record: dict | None) -> str:
    """What the run's number at this checkpoint is called: summary.json's final test acc when the
    checkpoint is the run's last state (a finished run's checkpoint.pt), its best when it is that."""
    if record is None:
        return ""
    try:
        summary = read_run(Path(checkpoint).parent)["summary"] or {}
    except UserError:  # no run folder around the checkpoint (a copied file), or a damaged one
        summary = {}
    if summary.get("steps") == record["step"] and summary.get("test_acc") == record["test_acc"]:
        return f"summary.json's final test acc {record['test_acc']:.4f} (step {record['step']:,})"
    if summary.get("best_test_acc") == record["test_acc"]:
        return f"summary.json's best test acc {record['test_acc']:.4f} (step {record['step']:,})"
    return f"the run's test acc {record['test_acc']:.4f} at this checkpoint's step {record['step']:,}"


def compare_with_run(accuracy: float, record: dict | None, reasons: list[str], runs_number: str) -> str:
    """One line: whether this number is the run's own for these weights, and if not, why."""
    how = "; ".join(reasons)
    if record is None:
        return ("the run did not test these weights (saved between test evaluations), so there is no number "
                "of its own to compare with" + (f"; measured with {how}" if reasons else ""))
    if accuracy == record["test_acc"]:
        return f"the same as {runs_number}" + (f", though measured differently: {how}" if reasons else "")
    if reasons:
        return f"differs from {runs_number} because of: {how}"
    return (f"differs from {runs_number} although measured as the run measured it: the machine or the "
            "software (torch, its kernels) differ from the run's")


def print_per_class(confusion, names) -> dict:
    """Print per-class accuracy; return it for JSON (which has no NaN: a class without examples is null),
    keyed by the names as shown (undecodable bytes escaped: JSON text holds no lone surrogate)."""
    names = [printable(name) for name in names]
    width = max(12, *(len(n) for n in names))
    print(f"{'class':<{width}} {'accuracy':>8} {'count':>6}")
    per_class = {}
    for i, name in enumerate(names):
        total = int(confusion[i].sum())
        acc = int(confusion[i, i]) / total if total else float("nan")
        per_class[name] = acc if math.isfinite(acc) else None
        print(f"{name:<{width}} {acc:>8.4f} {total:>6}")
    return per_class
