"""`alexnet-lab visualize --checkpoint PATH [--image FILE]`: what a trained network learned, as
PNGs: its first-layer filters and the feature maps of one image through each convolution.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alexnet_lab import files
from alexnet_lab.analysis.features import conv_layers, feature_maps, first_layer_filters, strongest_channels
from alexnet_lab.cli.options import MAX_INT, add_data, add_device, positive_int, whole_number
from alexnet_lab.data.imagefolder import pixels
from alexnet_lab.data.loader import to_float_batch
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.evaluation import checkpoint_test_split
from alexnet_lab.engine.inference import images_to_input, load_trained, metadata
from alexnet_lab.engine.run_dir import check_output_dir, make_output_dir
from alexnet_lab.errors import UserError, printable
from alexnet_lab.reports.plots import is_own_figure, plot_feature_maps, plot_filters

NAME = "visualize"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a run")
    parser.add_argument("--image", default=None,
                        help="image file of any size/mode, prepared like the model's training data "
                             "(28x28 grey for Fashion-MNIST); default: the first test image")
    parser.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                        help="--image, Fashion-MNIST models: invert dark-on-light images to light-on-dark")
    parser.add_argument("--test-index", type=whole_number(0, MAX_INT), default=0,
                        help="without --image: which test image (0: the first)")
    parser.add_argument("--maps", type=positive_int, default=8, metavar="N",
                        help="feature maps shown per convolution: the N channels that respond most (at most "
                             "the model's widest convolution's channels)")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: the checkpoint's)")
    parser.add_argument("--force", action="store_true",
                        help="replace a filters.png or feature_maps.png that visualize did not draw (its own are "
                             "replaced anyway); never a run's own files")
    add_device(parser)
    add_data(parser)


def model_input(args, config, payload: dict, meta: dict) -> tuple[torch.Tensor, str]:
    """(1, C, S, S) float input as the model takes it, and what the image is."""
    if args.image is not None:
        return images_to_input([args.image], meta, args.invert), printable(Path(args.image).name)
    splits = checkpoint_test_split(config, payload, data_dir=args.data_dir, few=True)  # no image decoded yet
    index, count = args.test_index, len(splits.test_labels)
    if index >= count:
        raise UserError(f"--test-index {index:,} is past the last of the run's {count:,} test images: give 0 to "
                        f"{count - 1:,}.")
    x = to_float_batch(pixels(splits.test_images, slice(index, index + 1)), meta["input_size"], meta["center_crop"])
    return x, f"test image {index} ({printable(meta['class_names'][int(splits.test_labels[index])])})"


def check_maps(maps: int, model, name: str) -> None:
    """--maps shows that many channels of every convolution: no more than the widest one has."""
    widest = max((conv.out_channels for _, conv in conv_layers(model)), default=0)
    if 0 < widest < maps:  # none: first_layer_filters says the model has no convolution
        raise UserError(f"--maps {maps:,} is more than {name}'s widest convolution has channels ({widest}): "
                        f"give at most {widest}.")


def run(args) -> int:
    device = resolve_device(args.device or "auto")
    model, config, payload = load_trained(args.checkpoint, device)
    check_maps(args.maps, model, config.model)
    out = check_output_dir(args.out if args.out is not None else Path(args.checkpoint).parent)
    for name in ("filters.png", "feature_maps.png"):  # checked before any work: its own PNGs are replaced
        files.check_own_output(out / name, is_own_figure, force=args.force, inputs=(args.checkpoint,))
    x, what = model_input(args, config, payload, metadata(config, payload))
    layers = feature_maps(model, x)
    for layer in layers:
        layer["channels"] = strongest_channels(layer["maps"], args.maps)
    filters = first_layer_filters(model)
    size = filters.shape[1]
    make_output_dir(out)
    plot_filters(filters.numpy(), [out / "filters.png"],
                 title=f"{len(filters)} first-layer filters of {config.model}, {size}x{size}")
    plot_feature_maps(x[0], layers, [out / "feature_maps.png"], channels=args.maps,
                      title=f"{what} through each convolution of {config.model}")
    print(f"First-layer filters ({len(filters)} of {size}x{size}): {out / 'filters.png'}")
    print(f"Feature maps of {what}, {args.maps} strongest channels per convolution "
          f"({', '.join('x'.join(map(str, layer['shape'])) for layer in layers)}): {out / 'feature_maps.png'}")
    return 0
