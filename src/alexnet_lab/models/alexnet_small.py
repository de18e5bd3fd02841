"""Exercise 2.1: AlexNet's layout (5 convolutions, 3 max-pools, 3 dense layers) at native 28x28 input with 3x3
kernels, narrower layers and BatchNorm (without it, it sat at chance for ~30 steps): ~15x fewer FLOPs."""

from torch import nn

from alexnet_lab.models.blocks import conv_bn_relu
from alexnet_lab.models.registry import register_model


@register_model("alexnet-small", input_size=28,
                description="exercise 2.1: AlexNet's layout at native 28x28 input with BatchNorm, ~15x fewer FLOPs")
def alexnet_small(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(                                   # (B, C, 28, 28)
        *conv_bn_relu(in_channels, 64),                               # (B, 64, 28, 28)
        nn.MaxPool2d(kernel_size=3, stride=2),              # (B, 64, 13, 13)
        *conv_bn_relu(64, 128),                             # (B, 128, 13, 13)
        nn.MaxPool2d(kernel_size=3, stride=2),              # (B, 128, 6, 6)
        *conv_bn_relu(128, 256),                            # (B, 256, 6, 6)
        *conv_bn_relu(256, 256),                            # (B, 256, 6, 6)
        *conv_bn_relu(256, 128),                            # (B, 128, 6, 6)
        nn.MaxPool2d(kernel_size=3, stride=2),              # (B, 128, 2, 2)
        nn.Flatten(),                                       # (B, 512)
        nn.Linear(512, 2048), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(2048, 2048), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(2048, num_classes),                       # (B, 10)
    )
