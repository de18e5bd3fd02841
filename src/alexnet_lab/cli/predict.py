"""`alexnet-lab predict`: classify image files with a trained checkpoint, top-3 classes each."""

from __future__ import annotations

import numpy as np
import torch

from alexnet_lab.cli.options import add_device, positive_int
from alexnet_lab.data import CLASS_NAMES, to_float_batch
from alexnet_lab.data.images import load_image_28
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.inference import load_trained
from alexnet_lab.engine.builders import input_size

NAME = "predict"
HELP = "classify image files (any size/mode; converted to 28x28 grayscale like the dataset)"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a run")
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files")
    parser.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                        help="invert dark-on-light images to the dataset's light-on-dark")
    parser.add_argument("--top", type=positive_int, default=3, help="classes to show per image")
    add_device(parser)


def run(args) -> int:
    device = resolve_device(args.device or "auto")
    pixels = np.stack([load_image_28(p, args.invert) for p in args.images])  # (N, 28, 28) uint8
    model, config, _ = load_trained(args.checkpoint, device)
    x = to_float_batch(torch.from_numpy(pixels).to(device), input_size(config))
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1).cpu()
    top = probs.topk(min(args.top, probs.shape[1]), dim=1)
    for path, values, indices in zip(args.images, top.values, top.indices):
        guesses = ", ".join(f"{CLASS_NAMES[i]} {v:.1%}" for v, i in zip(values.tolist(), indices.tolist()))
        print(f"{path}: {guesses}")
    return 0
