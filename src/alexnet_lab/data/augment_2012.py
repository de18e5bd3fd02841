"""The 2012 AlexNet paper's augmentation (Section 4.1), batched on the device: random crops with
horizontal flips, and PCA lighting ("altering the intensities of the RGB channels").

The paper cropped 224x224 patches from 256x256 images at training time and took the centre crop
(plus corners and flips, averaged) at test time; here the crop is the same fraction, 224/256, of
whatever side the images are stored at, and evaluation takes the centre crop.
"""

from __future__ import annotations

import torch

CROP_FRACTION = 224 / 256
LIGHTING_STD = 0.1  # the paper's standard deviation of the Gaussian PCA coefficients
PCA_IMAGES = 2000  # training images the colour statistics come from


def crop_side(side: int) -> int:
    return max(1, round(side * CROP_FRACTION))


def center_crop(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the centred (B, C, h, w) crop of side CROP_FRACTION."""
    h, w = crop_side(x.shape[-2]), crop_side(x.shape[-1])
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


def pca_sample(n: int, max_images: int = PCA_IMAGES) -> slice:
    """Which of `n` training images `color_pca` is given: every one up to 2 x `max_images`, beyond that
    every (n // max_images)-th (max_images to twice as many), evenly spaced."""
    return slice(None, None, max(1, n // max_images))


def color_pca(images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (C,) and eigenvectors (C, C, as columns) of the pixel-colour covariance of the
    images (the training images `pca_sample` picks), in [0, 1] units (the paper used all of ImageNet's)."""
    x = images_u8.unsqueeze(1) if images_u8.ndim == 3 else images_u8  # (n, C, H, W)
    pixels = x.transpose(0, 1).reshape(x.shape[1], -1).float() / 255.0  # (C, n*H*W)
    cov = torch.atleast_2d(torch.cov(pixels))
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    return eigenvalues.clamp(min=0), eigenvectors


def random_crops(x: torch.Tensor, generator: torch.Generator | None = None, flip: bool = True) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, C, h, w): a random crop of side CROP_FRACTION per image, mirrored with
    probability 1/2 when `flip` (the draw is made either way, so the crops do not depend on it)."""
    b, c, height, width = x.shape
    dev = x.device
    h, w = crop_side(height), crop_side(width)
    top = torch.randint(0, height - h + 1, (b,), generator=generator, device=dev)
    left = torch.randint(0, width - w + 1, (b,), generator=generator, device=dev)
    mirrored = (torch.rand(b, generator=generator, device=dev) < 0.5) & flip
    cols = torch.arange(w, device=dev)
    cols = torch.where(mirrored[:, None], w - 1 - cols, cols) + left[:, None]      # (B, w): mirrored reads
    rows = torch.arange(h, device=dev) + top[:, None]                             # (B, h)
    batch = torch.arange(b, device=dev)[:, None, None]
    crops = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]       # (B, h, w, C)
    return crops.permute(0, 3, 1, 2)


def pca_lighting(x: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (B, C, H, W) float in [0, 1] plus eigenvectors @ (alpha * eigenvalues), alpha ~ N(0, 0.1) per
    image and channel, added to every pixel (one draw per image and batch, as in the paper)."""
    b, c = x.shape[:2]
    dev = x.device
    alpha = torch.randn(b, c, generator=generator, device=dev) * LIGHTING_STD
    shift = (alpha * eigenvalues.to(dev)) @ eigenvectors.to(dev).T                # (B, C)
    return (x + shift[:, :, None, None]).clamp(0.0, 1.0).contiguous()


def augment_2012(x: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (B, C, H, W) float in [0, 1] -> (B, C, h, w): the paper's three together (--augment
    crop+flip+lighting): a random crop per image, mirrored with probability 1/2, and PCA lighting."""
    return pca_lighting(random_crops(x, generator), eigenvalues, eigenvectors, generator)
