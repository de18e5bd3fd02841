"""SpeedNet: a small BatchNorm CNN for 28x28 Fashion-MNIST, built for the least wall-clock time
to the book's 0.883 test accuracy (the `speedrun` preset). Not the chapter's network.
"""

from torch import nn

from alexnet_lab.models.blocks import conv_pool_bn_relu
from alexnet_lab.models.registry import register_model


@register_model("speednet", input_size=28,
                description="small BatchNorm CNN for the speedrun (3 conv-pool-BN-ReLU blocks, 28x28)")
def speednet(in_channels: int = 1, num_classes: int = 10,
             widths: tuple[int, int, int] = (16, 32, 64)) -> nn.Sequential:
    w1, w2, w3 = widths
    return nn.Sequential(                                  # (B, C, 28, 28)
        *conv_pool_bn_relu(in_channels, w1),               # (B, w1, 14, 14)
        *conv_pool_bn_relu(w1, w2),                        # (B, w2, 7, 7)
        *conv_pool_bn_relu(w2, w3),                        # (B, w3, 3, 3)
        nn.Flatten(),                                      # (B, 9 * w3)
        nn.Linear(9 * w3, num_classes),                    # (B, 10)
    )


@register_model("speednet-wide", input_size=28,
                description="speednet with twice the channels (32/64/128), for the speed ladder's middle rungs")
def speednet_wide(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    return speednet(in_channels, num_classes, widths=(32, 64, 128))
