"""`alexnet-lab predict`: classify image files with a checkpoint or an exported model file, top-3 each,
as lines to read or (`--json`) one JSON object for a program."""

from __future__ import annotations

import argparse
import json

import torch

from alexnet_lab.cli.options import add_device, positive_int
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.inference import images_to_input, load_trained, metadata
from alexnet_lab.errors import printable

NAME = "predict"


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint.pt or best.pt of a run")
    source.add_argument("--model-file", help="a model written by `alexnet-lab export`: ONNX (runs in onnxruntime), "
                                             "pt2 or safetensors, told apart by the file's content")
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files")
    parser.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                        help="Fashion-MNIST models: invert dark-on-light images to the dataset's light-on-dark")
    parser.add_argument("--top", type=positive_int, default=3, help="classes to show per image")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"model", "source", "predictions": [{"image", "top": '
                             '[{"class", "index", "probability"}, ...]}, ...]}, most probable class first')
    add_device(parser)


def predict(args: argparse.Namespace) -> tuple[str, list[tuple[str, list[tuple[str, int, float]]]]]:
    """(model name, [(image path, [(class name, class index, probability), ...] best first)]) for the
    images in `args`."""
    if args.model_file:
        from alexnet_lab.engine.export import ModelFile

        model = ModelFile(args.model_file)  # every kind runs on the CPU (ONNX: onnxruntime's CPU provider)
        meta, device = model.meta, torch.device("cpu")
    else:
        device = resolve_device(args.device or "auto")
        model, config, payload = load_trained(args.checkpoint, device)
        meta = metadata(config, payload)
    x = images_to_input(args.images, meta, args.invert).to(device)
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1).cpu()
    top = probs.topk(min(args.top, probs.shape[1]), dim=1)
    names = meta["class_names"]
    return meta["model"], [(path, [(names[i], i, v) for v, i in zip(values.tolist(), indices.tolist())])
                           for path, values, indices in zip(args.images, top.values, top.indices)]


def run(args) -> int:
    model, results = predict(args)
    # Shown as everywhere: a file or class name's undecodable bytes and control characters escaped.
    results = [(printable(path), [(printable(name), i, p) for name, i, p in guesses]) for path, guesses in results]
    if args.json:
        print(json.dumps({"model": model, "source": printable(args.checkpoint or args.model_file),
                          "predictions": [{"image": path, "top": [{"class": name, "index": i, "probability": p}
                                                                  for name, i, p in guesses]}
                                          for path, guesses in results]}))
        return 0
    for path, guesses in results:
        print(f"{path}: " + ", ".join(f"{name} {p:.1%}" for name, _, p in guesses))
    return 0
