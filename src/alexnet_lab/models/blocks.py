"""Blocks of the BatchNorm models: a 3x3 convolution, BatchNorm and ReLU in the two orders they use, each a list
of layers so that a model stays one flat nn.Sequential."""

from torch import nn


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    # No conv bias: the BatchNorm that follows has a shift, which makes it redundant.
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """Conv 3x3 (same size) -> BatchNorm -> ReLU."""
    return [conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU()]


def conv_pool_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """Conv 3x3 -> 2x2 max-pool -> BatchNorm -> ReLU (halves the side). Pooling first (airbench's order): the
    memory-bound BatchNorm and ReLU touch a quarter of the activations."""
    return [conv3x3(c_in, c_out), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU()]
