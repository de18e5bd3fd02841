"""Exercise 2.2: a compact batch-normalised CNN designed for 28x28 Fashion-MNIST.

airbench-style groups (conv -> max-pool -> BN -> ReLU -> conv -> BN -> ReLU) at 28, 14, 7 and 3 pixels.
"""

from torch import nn

from alexnet_lab.models.blocks import conv_bn_relu, conv_pool_bn_relu
from alexnet_lab.models.registry import register_model
from alexnet_lab.models.whitening import PatchWhitening


def group(c_in: int, c_out: int) -> list[nn.Module]:
    """Halve the side: conv at the input side, pool, then BN/ReLU and a second conv (airbench's order)."""
    return [*conv_pool_bn_relu(c_in, c_out), *conv_bn_relu(c_out, c_out)]


@register_model("fmnist-net", input_size=28,
                description="exercise 2.2: compact BN CNN for 28x28 input (95.3% with --preset best)")
def fmnist_net(in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int, int] = (32, 64, 128, 256),
               whiten: bool = False) -> nn.Sequential:
    """`whiten`: the first layer is a frozen 3x3 patch-whitening convolution (models/whitening.py,
    2 * 9 * in_channels channels) and a ReLU instead of a trained convolution with BatchNorm."""
    w0, w1, w2, w3 = widths
    if whiten:
        first = PatchWhitening(in_channels, kernel_size=3, padding=1)
        stem, w0 = [first, nn.ReLU()], first.out_channels
    else:
        stem = conv_bn_relu(in_channels, w0)
    return nn.Sequential(                                    # (B, C, 28, 28)
        *stem,                                               # (B, w0, 28, 28)
        *group(w0, w1),                                      # (B, w1, 14, 14)
        *group(w1, w2),                                      # (B, w2, 7, 7)
        *group(w2, w3),                                      # (B, w3, 3, 3)
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),               # (B, w3)
        nn.Dropout(p=0.1),
        nn.Linear(w3, num_classes),                          # (B, 10)
    )


@register_model("fmnist-net-s", input_size=28,
                description="fmnist-net at half the channels (16/32/64/128): a quarter of the FLOPs")
def fmnist_net_s(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    return fmnist_net(in_channels, num_classes, widths=(16, 32, 64, 128))


@register_model("fmnist-net-sw", input_size=28,
                description="fmnist-net-s with a patch-whitening first layer (airbench's; fitted to the data)")
def fmnist_net_sw(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    return fmnist_net(in_channels, num_classes, widths=(16, 32, 64, 128), whiten=True)
