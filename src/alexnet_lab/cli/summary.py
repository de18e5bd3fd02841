"""`alexnet-lab summary`: every layer's output shape, as the chapter prints it."""

from alexnet_lab.analysis.shapes import format_shapes
from alexnet_lab.cli.options import add_adaptation, add_model, like_setting, model_for_args
from alexnet_lab.models import check_input_size, get_spec

NAME = "summary"


def add_arguments(parser) -> None:
    add_model(parser)
    parser.add_argument("--input-size", type=like_setting("resize"), default=None,
                        help="side of the probe image (default: the model's, 224 for alexnet)")
    parser.add_argument("--batch-size", type=like_setting("batch_size"), default=1, help="batch size of the probe")
    add_adaptation(parser)
    parser.add_argument("--detail", action="store_true", help="add per-layer parameters and output bytes")


def run(args) -> int:
    size = args.input_size or get_spec(args.model).input_size
    check_input_size(args.model, size)
    model, channels = model_for_args(args)
    print(format_shapes(model, (args.batch_size, channels, size, size), detail=args.detail))
    return 0
