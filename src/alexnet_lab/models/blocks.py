"""Building blocks shared by the BatchNorm models: a 3x3 convolution followed by BatchNorm and ReLU,
in the two orders the models use. Each returns a list of layers, so a model stays one flat nn.Sequential.
"""

from torch import nn


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    # No conv bias: the BatchNorm that follows has a shift, which makes it redundant.
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """Conv 3x3 (same size) -> BatchNorm -> ReLU."""
    return [conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU()]


def conv_pool_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """Conv 3x3 -> 2x2 max-pool -> BatchNorm -> ReLU (halves the side).

    Pooling before BatchNorm and ReLU (airbench's order) makes them touch a quarter of the
    activations; on a 2-core CPU, where they are memory-bound, that made speednet's step 1.5x faster.
    """
    return [conv3x3(c_in, c_out), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU()]
