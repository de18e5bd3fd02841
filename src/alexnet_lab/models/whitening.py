"""A patch-whitening first layer, airbench's trick: a frozen convolution whose filters decorrelate the
training images' k x k patches and give every direction unit variance, set from the data before training.

Written here rather than taken from a library: it is a dozen lines of linear algebra (an eigen-
decomposition of one small covariance matrix), and the layer must be a plain nn.Module of the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patch_whitening_filters(images: torch.Tensor, kernel_size: int,
                            eps: float = 5e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Filters and biases that whiten the k x k patches of `images` (N, C, H, W float).

    With d = C*k*k: the d eigenvectors of the patches' covariance, largest eigenvalue first, each
    scaled by 1 / sqrt(eigenvalue + eps), then the same d filters negated (so a ReLU after the layer
    keeps both signs of every direction): filters (2d, C, k, k). The biases subtract the mean patch,
    so on these images each output has mean 0 and the first d outputs have covariance
    diag(eigenvalue / (eigenvalue + eps)), nearly the identity. A fixed function of the images.
    """
    c, k = images.shape[1], kernel_size
    patches = F.unfold(images.double(), k).transpose(1, 2).reshape(-1, c * k * k)  # (N * L, d)
    mean = patches.mean(dim=0)
    centered = patches - mean
    covariance = centered.T @ centered / len(centered)                              # (d, d)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)                       # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    rows = eigenvectors.T / (eigenvalues.clamp(min=0) + eps).sqrt()[:, None]       # (d, d)
    filters = torch.cat([rows, -rows])                                              # (2d, d)
    return filters.reshape(-1, c, k, k).float(), (-(filters @ mean)).float()


class PatchWhitening(nn.Conv2d):
    """Conv k x k, C -> 2*C*k*k channels, whose filters are frozen (requires_grad False: no gradient,
    no update, no weight decay) and set by `fit`; the bias trains. Until `fit` sees data they hold
    PyTorch's default initialisation, so an unfitted layer is a fixed random convolution."""

    def __init__(self, in_channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__(in_channels, 2 * in_channels * kernel_size ** 2, kernel_size, padding=padding)
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters and the bias from `images` (N, C, H, W float, as the model sees them)."""
        weight, bias = patch_whitening_filters(images.cpu(), self.kernel_size[0])  # float64 on the CPU (not MPS)
        self.weight.copy_(weight)  # copy_: keeps the weight's memory format (channels-last)
        self.bias.copy_(bias)


def whitening_layers(model: nn.Module) -> list[PatchWhitening]:
    """The model's whitening layers, to fit before training (engine/trainer.py does, from the first
    training images: only a model's first layer is a whitening layer, so it sees what the model sees)."""
    return [m for m in model.modules() if isinstance(m, PatchWhitening)]
