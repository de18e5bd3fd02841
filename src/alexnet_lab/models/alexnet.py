"""The chapter's AlexNet for 224x224 Fashion-MNIST, layer for layer: the chapter's `nn.Sequential`, so a
state_dict from the book's code loads with strict=True."""

from torch import nn

from alexnet_lab.models.registry import register_model


@register_model("alexnet", input_size=224, description="the chapter's AlexNet (46.8 M parameters)")
def alexnet(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(                                               # (B, C, 224, 224)
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),  # (B, 96, 54, 54)
        nn.MaxPool2d(kernel_size=3, stride=2),                          # (B, 96, 26, 26)
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),        # (B, 256, 26, 26)
        nn.MaxPool2d(kernel_size=3, stride=2),                          # (B, 256, 12, 12)
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),       # (B, 384, 12, 12)
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),       # (B, 384, 12, 12)
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),       # (B, 256, 12, 12)
        nn.MaxPool2d(kernel_size=3, stride=2),                          # (B, 256, 5, 5)
        nn.Flatten(),                                                   # (B, 6400)
        nn.Linear(6400, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),                                   # (B, 10)
    )
