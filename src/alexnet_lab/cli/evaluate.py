"""`alexnet-lab evaluate`: test accuracy, per-class accuracy and a confusion matrix of a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

from alexnet_lab.cli.options import add_config_flag, add_data, add_device
from alexnet_lab.data import CLASS_NAMES
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.inference import load_trained
from alexnet_lab.engine.builders import load_splits, make_loaders
from alexnet_lab.engine.trainer import evaluate
from alexnet_lab.reports.plots import plot_confusion
from alexnet_lab.reports.run_dir import make_output_dir, write_json

NAME = "evaluate"
HELP = "evaluate a checkpoint on the Fashion-MNIST test set"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a run")
    add_data(parser)
    add_device(parser)
    add_config_flag(parser, "limit_test")
    parser.add_argument("--out", default=None, help="folder for confusion.png (default: the checkpoint's)")


def run(args) -> int:
    device = resolve_device(args.device or "auto")
    model, config, _ = load_trained(args.checkpoint, device)
    config = config.replace(limit_test=args.limit_test, limit_train=1, data_dir=args.data_dir)
    splits = load_splits(config.data_dir, 1, config.limit_test)
    _, test_loader = make_loaders(config, splits, device)
    result = evaluate(model, test_loader, device, "fp32", False)
    confusion = result["confusion"]
    print(f"test acc {result['accuracy']:.4f} ({result['correct']}/{result['examples']}), "
          f"loss {result['loss']:.4f}, model {config.model}, {args.checkpoint}")
    print(f"{'class':<12} {'accuracy':>8} {'count':>6}")
    per_class = {}
    for i, name in enumerate(CLASS_NAMES):
        total = int(confusion[i].sum())
        acc = int(confusion[i, i]) / total if total else float("nan")
        per_class[name] = acc
        print(f"{name:<12} {acc:>8.4f} {total:>6}")
    out = make_output_dir(args.out if args.out is not None else Path(args.checkpoint).parent)
    plot_confusion(confusion.numpy(), CLASS_NAMES, out / "confusion.png",
                   f"{config.model}: test acc {result['accuracy']:.4f}")
    # JSON has no NaN: a class with no test example gets null.
    per_class = {name: (acc if math.isfinite(acc) else None) for name, acc in per_class.items()}
    write_json(out / "evaluation.json",
               {"checkpoint": str(args.checkpoint), "test_acc": result["accuracy"], "test_loss": result["loss"],
                "examples": result["examples"], "per_class_acc": per_class, "confusion": confusion.tolist()})
    print(f"Confusion matrix: {out / 'confusion.png'}; numbers: {out / 'evaluation.json'}")
    return 0
