"""The 2012 paper's augmentation, batched: crops are crops, flips are mirror images, PCA lighting
adds a multiple of the colour eigenvectors; evaluation takes the centre crop."""

from __future__ import annotations

import torch

from alexnet_lab.data import BatchLoader
from alexnet_lab.data.augment_2012 import augment_2012, center_crop, color_pca, crop_side


def test_each_output_is_a_crop_of_its_image_or_its_mirror():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=gen)
    no_light = torch.zeros(3), torch.eye(3)
    out = augment_2012(x, *no_light, torch.Generator().manual_seed(1))
    side = crop_side(32)
    assert side == 28 and out.shape == (16, 3, 28, 28)
    flips = 0
    for image, crop in zip(x, out):
        windows = [image[:, t:t + side, l:l + side] for t in range(5) for l in range(5)]
        plain = any(torch.equal(crop, w) for w in windows)
        mirrored = any(torch.equal(crop, w.flip(-1)) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 2 <= flips <= 14  # about half are mirrored


def test_pca_lighting_shifts_every_pixel_along_the_colour_eigenvectors():
    gen = torch.Generator().manual_seed(0)
    # Pixels varying mostly along (1, 1, 0)/sqrt(2): the top eigenvector.
    t = torch.rand(64, 1, 8, 8, generator=gen)
    images = (torch.cat([t, t, 0.5 * torch.ones_like(t)], 1) * 200 + 20).to(torch.uint8)
    values, vectors = color_pca(images)
    top = vectors[:, values.argmax()]
    assert abs(abs(float(top @ torch.tensor([1.0, 1.0, 0.0]))) / 2 ** 0.5 - 1) < 1e-3
    x = torch.full((4, 3, 8, 8), 0.5)
    out = augment_2012(x, values, vectors, torch.Generator().manual_seed(3))
    shift = out - 0.5                                    # the same for every pixel of an image
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    per_image = shift[:, :, 0, 0]                        # (4, 3)
    # The blue channel never varies (eigenvalue 0): lighting moves colours only along (1, 1, 0).
    assert per_image[:, 2].abs().max() < 1e-6 and float(values.min()) < 1e-6
    assert torch.allclose(per_image[:, 0], per_image[:, 1], atol=1e-6) and per_image.abs().max() > 1e-3


def test_loader_trains_on_crops_and_evaluates_on_the_centre_crop():
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(10)
    train = BatchLoader(images, labels, 4, shuffle=True, resize=20, augment=True, augmentation="alexnet-2012")
    x, _ = next(iter(train))
    assert x.shape == (4, 3, 20, 20)
    test = BatchLoader(images, labels, 10, shuffle=False, resize=None, center_crop=True)
    x, _ = next(iter(test))
    torch.testing.assert_close(x, center_crop(images.float() / 255))
    assert x.shape == (10, 3, 28, 28)
