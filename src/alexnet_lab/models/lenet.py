"""d2l's LeNet-5 (sigmoid activations, average pooling) for 28x28 input."""

from torch import nn

from alexnet_lab.models.registry import register_model


@register_model("lenet", input_size=28, description="d2l's LeNet-5: sigmoid, average pooling (61,706 parameters)")
def lenet(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(                                   # (B, C, 28, 28)
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Sigmoid(),  # (B, 6, 28, 28)
        nn.AvgPool2d(kernel_size=2, stride=2),              # (B, 6, 14, 14)
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),      # (B, 16, 10, 10)
        nn.AvgPool2d(kernel_size=2, stride=2),              # (B, 16, 5, 5)
        nn.Flatten(),                                       # (B, 400)
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes),                         # (B, 10)
    )
