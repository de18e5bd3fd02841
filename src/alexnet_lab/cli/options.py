"""Argument groups shared by several commands, so each flag is defined once."""

from __future__ import annotations

import argparse

from alexnet_lab.engine.config import DEVICES, INITS, PRECISIONS, SCHEDULES, preset_names
from alexnet_lab.models import list_models


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_model(parser: argparse.ArgumentParser, default: str | None = "alexnet") -> None:
    parser.add_argument("--model", choices=list_models(), default=default,
                        help="model from the registry" + ("" if default else " (default: the preset's)"))


def add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="folder with the Fashion-MNIST IDX files (else $ALEXNET_LAB_DATA, the user "
                             "cache, /usr/share/datasets/fashion-mnist, then a download)")


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def add_data_source(parser) -> None:
    """--data and how an image folder is read (None: the config's value)."""
    parser.add_argument("--data", default=None, metavar="fashion-mnist|imagefolder:DIR",
                        help="the data: Fashion-MNIST (default), or DIR/<class>/<image> (any format, size "
                             "and mode Pillow reads; DIR/train/... and DIR/val/... if present)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="input channels (default: the data's; image folders: 3 unless all are gray)")
    parser.add_argument("--val-fraction", type=fraction, default=None,
                        help="image folder without train/val folders: share of each class held out for "
                             "validation, seeded by --seed (default: 0.2)")
    parser.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                        help="refuse unreadable image files instead of listing and skipping them")


def add_adaptation(parser: argparse.ArgumentParser) -> None:
    """The data a model is built for, as `train` adapts it (summary, profile)."""
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="input channels (default: the model's, 1 except for alexnet-2012)")
    parser.add_argument("--num-classes", type=positive_int, default=None,
                        help="output classes (default: the model's, 10 except for alexnet-2012's 1000)")


def model_for_args(args: argparse.Namespace):
    """(model built for --channels/--num-classes, its input channels)."""
    from alexnet_lab.models import build_model, get_spec

    channels = args.channels or get_spec(args.model).in_channels
    kwargs = {"in_channels": channels} | ({"num_classes": args.num_classes} if args.num_classes else {})
    return build_model(args.model, **kwargs), channels


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help="auto prefers cuda, then mps, then cpu (default: auto)")


def add_training(parser: argparse.ArgumentParser) -> None:
    """Flags that override the chosen preset; unset flags keep the preset's value."""
    parser.add_argument("--preset", choices=preset_names(), default="d2l",
                        help="named recipe; the flags below override it (default: d2l, the book's recipe)")
    add_model(parser, default=None)
    g = parser.add_argument_group("recipe (overrides the preset)")
    g.add_argument("--epochs", type=positive_float, help="epochs to train (fractions allowed)")
    g.add_argument("--batch-size", type=positive_int,
                   help="global batch size: under torchrun each of the N processes takes batch-size/N "
                        "examples per step (must divide evenly)")
    g.add_argument("--lr", type=positive_float, help="(peak) learning rate")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, help="L2 weight decay")
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule, per step")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing")
    g.add_argument("--resize", type=positive_int, help="input side in pixels (default: the model's)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random shift, flip, brightness/contrast jitter on the device")
    g.add_argument("--seed", type=int, help="seed for init, data order and augmentation")
    g.add_argument("--init", choices=INITS,
                   help="xavier: d2l's xavier_uniform_ (the book's recipe); default: the model's own "
                        "(alexnet-2012: the paper's N(0, 0.01) and biases of 1)")
    n = parser.add_argument_group("numerics")
    n.add_argument("--precision", choices=PRECISIONS, help="autocast precision (auto: bf16 where fast)")
    n.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format")
    n.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile")
    n.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="deterministic kernels (bit-exact resume)")
    add_device(n)
    d = parser.add_argument_group("data and run")
    add_data(d)
    add_data_source(d)
    d.add_argument("--limit-train", type=positive_int, help="use the first N training examples")
    d.add_argument("--limit-test", type=positive_int, help="use the first N test examples")
    d.add_argument("--target-accuracy", type=float,
                   help="evaluate 5 times per epoch and stop at the first test accuracy >= this")
    d.add_argument("--checkpoint-every", type=positive_int, help="also checkpoint every N steps")


TRAINING_KEYS = ("model", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule",
                 "label_smoothing", "resize", "augment", "seed", "precision", "channels_last", "compile",
                 "deterministic", "device", "data_dir", "limit_train", "limit_test", "target_accuracy",
                 "checkpoint_every", "data", "channels", "val_fraction", "strict", "init")


def training_overrides(args: argparse.Namespace) -> dict:
    return {key: getattr(args, key, None) for key in TRAINING_KEYS}
