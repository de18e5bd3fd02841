"""`alexnet-lab evaluate`: test accuracy, per-class accuracy and a confusion matrix of a checkpoint."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from alexnet_lab.cli.options import add_config_flag, add_data, add_data_source, add_device
from alexnet_lab.engine.builders import make_loaders, splits_for
from alexnet_lab.engine.checkpoint import class_names
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.inference import load_trained
from alexnet_lab.engine.trainer import evaluate
from alexnet_lab.errors import UserError
from alexnet_lab.reports.plots import plot_confusion
from alexnet_lab.reports.run_dir import make_output_dir, write_json

NAME = "evaluate"
HELP = "evaluate a checkpoint on its test data (Fashion-MNIST's test set, or the image folder's validation split)"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a run")
    add_data(parser)
    add_data_source(parser)
    add_device(parser)
    add_config_flag(parser, "limit_test")
    parser.add_argument("--out", default=None, help="folder for confusion.png (default: the checkpoint's)")


def run(args) -> int:
    device = resolve_device(args.device or "auto")
    model, config, payload = load_trained(args.checkpoint, device)
    names = class_names(payload)
    # The run's own data and split unless told otherwise; --data must then have the same classes.
    overrides = {k: v for k, v in vars(args).items() if k in ("data", "channels", "val_fraction", "strict")
                 and v is not None}
    config = config.replace(limit_test=args.limit_test, limit_train=1, data_dir=args.data_dir, **overrides)
    splits = splits_for(config)
    for note in splits.notes:
        print(note, file=sys.stderr)
    if tuple(splits.class_names) != names:
        raise UserError(f"The data's classes ({', '.join(splits.class_names)}) are not the ones "
                        f"{args.checkpoint} was trained on ({', '.join(names)}).")
    _, test_loader = make_loaders(config, splits, device)
    result = evaluate(model, test_loader, device, "fp32", False, len(names))
    confusion = result["confusion"]
    print(f"test acc {result['accuracy']:.4f} ({result['correct']}/{result['examples']}), "
          f"loss {result['loss']:.4f}, model {config.model}, {args.checkpoint}")
    width = max(12, *(len(n) for n in names))
    print(f"{'class':<{width}} {'accuracy':>8} {'count':>6}")
    per_class = {}
    for i, name in enumerate(names):
        total = int(confusion[i].sum())
        acc = int(confusion[i, i]) / total if total else float("nan")
        per_class[name] = acc
        print(f"{name:<{width}} {acc:>8.4f} {total:>6}")
    out = make_output_dir(args.out if args.out is not None else Path(args.checkpoint).parent)
    plot_confusion(confusion.numpy(), names, out / "confusion.png",
                   f"{config.model}: test acc {result['accuracy']:.4f}")
    # JSON has no NaN: a class with no test example gets null.
    per_class = {name: (acc if math.isfinite(acc) else None) for name, acc in per_class.items()}
    write_json(out / "evaluation.json",
               {"checkpoint": str(args.checkpoint), "test_acc": result["accuracy"], "test_loss": result["loss"],
                "examples": result["examples"], "per_class_acc": per_class, "confusion": confusion.tolist()})
    print(f"Confusion matrix: {out / 'confusion.png'}; numbers: {out / 'evaluation.json'}")
    return 0
