"""A patch-whitening first layer (airbench's): a frozen convolution whose filters decorrelate the training
images' k x k patches to unit variance, set from the data before training (one small eigendecomposition)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patch_whitening_filters(images: torch.Tensor, kernel_size: int,
                            eps: float = 5e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Filters (2d, C, k, k) and biases that whiten the k x k patches of `images` (N, C, H, W float), d = C*k*k:
    the patches' covariance eigenvectors (largest first) scaled by 1 / sqrt(eigenvalue + eps), then negated
    (a ReLU after keeps both signs); the biases subtract the mean patch, so the outputs have mean 0 and
    covariance nearly the identity."""
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
    """Conv k x k, C -> 2*C*k*k channels with frozen filters (no gradient, update or decay) set by `fit` (until
    then PyTorch's random init); the bias trains."""

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
    """The model's whitening layers, which engine/trainer.py fits to the first training images."""
    return [m for m in model.modules() if isinstance(m, PatchWhitening)]
