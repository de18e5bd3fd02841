"""The 2012 AlexNet (Krizhevsky, Sutskever and Hinton) in single-tower form (each layer whole, not split across
two GPUs: 62,378,344 parameters at 3x224x224 -> 1000, the paper's ~61 M): ReLU, local response normalization,
overlapping pooling, dropout, the paper's init; `--augment` alone means its crop+flip+lighting."""

from torch import nn

from alexnet_lab.models.registry import register_model


def local_response_norm() -> nn.LocalResponseNorm:
    # The paper: b = a / (k + alpha * sum_{5 neighbours} a^2)^beta with alpha = 1e-4. PyTorch's
    # LocalResponseNorm divides alpha by the window size n, so it gets n * 1e-4.
    n = 5
    return nn.LocalResponseNorm(size=n, alpha=n * 1e-4, beta=0.75, k=2.0)


def paper_init(model: nn.Sequential) -> None:
    """Section 5 of the paper: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden
    dense layers (so the ReLUs start with positive inputs), 0 in conv1, conv3 and the output layer."""
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]  # conv1..conv5, fc6..fc8
    for index, layer in enumerate(layers, start=1):
        nn.init.normal_(layer.weight, mean=0.0, std=0.01)
        nn.init.constant_(layer.bias, 1.0 if index in (2, 4, 5, 6, 7) else 0.0)


@register_model("alexnet-2012", input_size=224, in_channels=3, augmentation="alexnet-2012",
                description="the 2012 ImageNet AlexNet, single tower: LRN, overlapping pooling, the "
                            "paper's init and augmentation (62.4 M parameters at 3x224 -> 1000)")
def alexnet_2012(in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.5) -> nn.Sequential:
    # padding=2 on conv1 makes 224 (the paper's stated size) and 227 (the size its arithmetic
    # needs without padding) both give 55x55 maps, then 27, 13 and 6.
    model = nn.Sequential(                                               # (B, 3, 224, 224)
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=2), nn.ReLU(),  # (B, 96, 55, 55)
        local_response_norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),                           # (B, 96, 27, 27)
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),         # (B, 256, 27, 27)
        local_response_norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),                           # (B, 256, 13, 13)
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),        # (B, 384, 13, 13)
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),        # (B, 384, 13, 13)
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),        # (B, 256, 13, 13)
        nn.MaxPool2d(kernel_size=3, stride=2),                           # (B, 256, 6, 6)
        nn.Flatten(),                                                    # (B, 9216)
        # Dropout zeroes the outputs of the two hidden dense layers (the paper's Section 4.2).
        nn.Linear(256 * 6 * 6, 4096), nn.ReLU(), nn.Dropout(p=dropout),  # (B, 4096)
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=dropout),         # (B, 4096)
        nn.Linear(4096, num_classes),                                    # (B, 1000)
    )
    paper_init(model)
    return model
