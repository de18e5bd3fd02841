"""Exercise 5: LeNet-5 with ReLU, max pooling and dropout; `lenet`'s sizes (61,706 parameters), so any accuracy
difference is theirs."""

from torch import nn

from alexnet_lab.models.registry import register_model


@register_model("lenet-modern", input_size=28,
                description="exercise 5: LeNet-5 with ReLU, max pooling and dropout (61,706 parameters)")
def lenet_modern(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.25) -> nn.Sequential:
    return nn.Sequential(                                          # (B, C, 28, 28)
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.ReLU(),      # (B, 6, 28, 28)
        nn.MaxPool2d(kernel_size=2, stride=2),                     # (B, 6, 14, 14)
        nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(),                # (B, 16, 10, 10)
        nn.MaxPool2d(kernel_size=2, stride=2),                     # (B, 16, 5, 5)
        nn.Flatten(),                                              # (B, 400)
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Dropout(p=dropout),
        nn.Linear(120, 84), nn.ReLU(), nn.Dropout(p=dropout),
        nn.Linear(84, num_classes),                                # (B, 10)
    )
