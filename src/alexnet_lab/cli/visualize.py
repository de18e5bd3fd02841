"""`alexnet-lab visualize --checkpoint PATH [--image FILE]`: what a trained network learned, as
PNGs: its first-layer filters and the feature maps of one image through each convolution.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alexnet_lab.analysis.features import feature_maps, first_layer_filters, strongest_channels
from alexnet_lab.cli.options import add_data, add_device, positive_int
from alexnet_lab.data import CLASS_NAMES
from alexnet_lab.data.images import load_image_28
from alexnet_lab.engine.device import resolve_device
from alexnet_lab.engine.inference import load_trained
from alexnet_lab.engine.builders import input_size, load_splits
from alexnet_lab.reports.plots import plot_feature_maps, plot_filters

NAME = "visualize"
HELP = "PNGs of a checkpoint's first-layer filters and of an image's feature maps through each convolution"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a run")
    parser.add_argument("--image", default=None,
                        help="image file of any size/mode (converted to 28x28 grey like the dataset); "
                             "default: the first test image")
    parser.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                        help="--image: invert dark-on-light images to the dataset's light-on-dark")
    parser.add_argument("--test-index", type=int, default=0, help="without --image: which test image")
    parser.add_argument("--channels", type=positive_int, default=8, help="feature maps shown per convolution")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: the checkpoint's)")
    add_device(parser)
    add_data(parser)


def _image(args, config) -> tuple[torch.Tensor, str]:
    """(28, 28) uint8 image and a description of it."""
    if args.image is not None:
        return torch.from_numpy(load_image_28(args.image, args.invert)), Path(args.image).name
    splits = load_splits(args.data_dir or config.data_dir, 1, args.test_index + 1)
    index = min(args.test_index, len(splits.test_images) - 1)
    return splits.test_images[index], f"test image {index} ({CLASS_NAMES[int(splits.test_labels[index])]})"


def run(args) -> int:
    device = resolve_device(args.device or "auto")
    model, config, _ = load_trained(args.checkpoint, device)
    out = Path(args.out or Path(args.checkpoint).parent)
    out.mkdir(parents=True, exist_ok=True)
    filters = first_layer_filters(model)
    size = filters.shape[-1]
    plot_filters(filters.numpy(), [out / "filters.png"],
                 title=f"{len(filters)} first-layer filters of {config.model}, {size}x{size}")
    image, what = _image(args, config)
    layers = feature_maps(model, image, input_size(config))
    for layer in layers:
        layer["channels"] = strongest_channels(layer["maps"], args.channels)
    plot_feature_maps(image.cpu().numpy(), layers, [out / "feature_maps.png"], channels=args.channels,
                      title=f"{what} through each convolution of {config.model}")
    print(f"First-layer filters ({len(filters)} of {size}x{size}): {out / 'filters.png'}")
    print(f"Feature maps of {what}, {args.channels} strongest channels per convolution "
          f"({', '.join('x'.join(map(str, layer['shape'])) for layer in layers)}): {out / 'feature_maps.png'}")
    return 0
