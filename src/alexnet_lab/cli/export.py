"""`alexnet-lab export`: write a checkpoint's model as ONNX, torch.export (.pt2) or safetensors weights, then
check the file against PyTorch on a few test images and print that check."""

from __future__ import annotations

import sys

import torch

from alexnet_lab import files
from alexnet_lab.cli.options import whole_number
from alexnet_lab.engine.export import FORMATS, ModelFile, check_format, compare_outputs, export_model
from alexnet_lab.engine.inference import load_trained, metadata
from alexnet_lab.engine.evaluation import checkpoint_test_split
from alexnet_lab.data import to_float_batch
from alexnet_lab.data.imagefolder import pixels
from alexnet_lab.errors import UserError, printable

NAME = "export"

MAX_CHECK_IMAGES = 256  # compared in one batch through both models


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a run")
    parser.add_argument("--format", default="onnx", metavar="{" + ",".join(FORMATS) + "}",
                        help="onnx (onnxruntime and other runtimes), pt2 (torch.export), safetensors (the "
                             "weights, for alexnet_lab.models.build_model)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="file to write (e.g. model.onnx, model.pt2, model.safetensors); the format comes "
                             "from --format, not the name")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file (never the checkpoint read)")
    parser.add_argument("--check-images", type=whole_number(1, MAX_CHECK_IMAGES), default=8,
                        help=f"test images to compare the exported model on (at most {MAX_CHECK_IMAGES}: one batch)")


def check_inputs(config, payload: dict, meta: dict, n: int) -> tuple[torch.Tensor, str]:
    """The first n test images of the run's data as model inputs (only those read); random inputs if the
    data is gone."""
    try:
        splits = checkpoint_test_split(config, payload, limit=n, few=True)
    except UserError as exc:
        print(f"note: the run's test data is not available ({exc}); checking on random inputs.", file=sys.stderr)
        gen = torch.Generator().manual_seed(0)
        size = meta["input_size"]
        return torch.rand(n, meta["in_channels"], size, size, generator=gen), f"{n} random inputs"
    return to_float_batch(pixels(splits.test_images, slice(n)), meta["input_size"], meta["center_crop"]), \
        f"the first {len(splits.test_labels)} test images"


def run(args) -> int:
    check_format(args.format)  # a one-line answer for --format torchscript, which was removed
    files.check_output_file(args.out, force=args.force, inputs=(args.checkpoint,))
    model, config, payload = load_trained(args.checkpoint, torch.device("cpu"))
    meta = metadata(config, payload)
    out = export_model(model, meta, args.format, args.out)
    exported = ModelFile(out)
    images, what = check_inputs(config, payload, meta, args.check_images)
    check = compare_outputs(model, exported, images)
    print(f"Wrote {out} ({args.format}, {out.stat().st_size / 2**20:.1f} MiB): {meta['model']}, input "
          f"{meta['input']}; classes: {', '.join(map(printable, meta['class_names']))}.")
    verdict = "match" if check["within_tolerance"] else "DO NOT match"
    print(f"Check on {what}: {exported.kind} and PyTorch outputs {verdict} (largest logit difference "
          f"{check['max_abs_diff']:.2e}; tolerance {check['tolerance']}); same top-1 class for "
          f"{check['top1_agree']}/{check['images']} images.")
    if not check["within_tolerance"]:
        raise UserError(f"The exported model's outputs differ from PyTorch's beyond the tolerance; do not use "
                        f"'{out}'.")
    return 0
