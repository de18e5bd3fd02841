"""`alexnet-lab summary`: every layer's output shape, as the chapter prints it."""

from alexnet_lab.analysis.shapes import format_shapes
from alexnet_lab.cli.options import add_adaptation, add_model, add_probe, model_for_args
from alexnet_lab.models import check_input_size, get_spec

NAME = "summary"


def add_arguments(parser) -> None:
    add_model(parser)
    add_probe(parser)
    add_adaptation(parser)
    parser.add_argument("--detail", action="store_true", help="add per-layer parameters and output bytes")


def run(args) -> int:
    size = args.resize or get_spec(args.model).input_size
    check_input_size(args.model, size)
    model, channels = model_for_args(args)
    print(format_shapes(model, (args.batch_size, channels, size, size), detail=args.detail))
    return 0
