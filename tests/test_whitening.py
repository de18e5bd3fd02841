"""The patch-whitening first layer (models/whitening.py): a fixed function of the data that whitens
patches, fitted by `fit` from the first training images, frozen while the rest trains."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from alexnet_lab.engine.builders import Splits, whitening_images
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.trainer import Callback, fit
from alexnet_lab.models import build_model
from alexnet_lab.models.whitening import PatchWhitening, patch_whitening_filters, whitening_layers


def _smooth_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Random images blurred so neighbouring pixels correlate (as in real images), (n, 1, 16, 16)."""
    noise = torch.rand(n, 1, 18, 18, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(noise, 3, stride=1)


def test_filters_whiten_the_patches_against_numpy():
    """The first d outputs have zero mean and unit covariance on the images they were fitted to,
    checked with numpy's own patch extraction and covariance; the last d are their negatives."""
    images = _smooth_images()
    weight, bias = patch_whitening_filters(images, kernel_size=3, eps=1e-9)
    assert weight.shape == (18, 1, 3, 3) and bias.shape == (18,)
    patches = np.lib.stride_tricks.sliding_window_view(images.double().numpy()[:, 0], (3, 3), axis=(1, 2))
    patches = patches.reshape(-1, 9)                                      # (N * 14 * 14, 9)
    outputs = patches @ weight.double().numpy().reshape(18, 9).T + bias.double().numpy()
    np.testing.assert_allclose(outputs[:, :9].mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(outputs[:, :9], rowvar=False, bias=True), np.eye(9), atol=2e-3)
    np.testing.assert_allclose(outputs[:, 9:], -outputs[:, :9], atol=1e-5)
    # the module computes the same thing as a convolution
    layer = PatchWhitening(1, kernel_size=3, padding=0)
    layer.weight.data.copy_(weight)
    layer.bias.data.copy_(bias)
    conv = layer(images).permute(0, 2, 3, 1).reshape(-1, 18)
    np.testing.assert_allclose(conv.detach().numpy(), outputs, atol=1e-3)


def test_filters_are_a_fixed_function_of_the_data():
    images = _smooth_images(seed=1)
    first, again = patch_whitening_filters(images, 3), patch_whitening_filters(images.clone(), 3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = patch_whitening_filters(_smooth_images(seed=2), 3)
    assert not torch.allclose(first[0], other[0], atol=1e-3)


class LastCheckpoint(Callback):
    def on_checkpoint(self, payload, is_best):
        self.payload = payload


def test_fit_whitens_from_the_training_images_and_keeps_the_filters_frozen(one_thread):
    """`fit` sets the layer from the first training images as the model sees them; training moves
    the bias and every other weight but not the filters, which the checkpoint carries."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (96, 28, 28), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, 96))
    splits = Splits(images, labels, images[:32], labels[:32], "synthetic")
    config = make_config("speedrun-94", model="fmnist-net-sw", epochs=1, batch_size=32, device="cpu",
                         precision="fp32", channels_last=False, ema_decay=0.9)
    fit(config, [saved := LastCheckpoint()], splits=splits)
    state = saved.payload["model_state"]
    expected_weight, _ = patch_whitening_filters(whitening_images(config, splits), kernel_size=3)
    torch.testing.assert_close(state["0.weight"], expected_weight)   # frozen: fitted, never trained
    torch.testing.assert_close(saved.payload["ema_state"]["module"]["0.weight"], expected_weight)  # EMA too
    fitted_bias = patch_whitening_filters(whitening_images(config, splits), kernel_size=3)[1]
    assert not torch.allclose(state["0.bias"], fitted_bias)            # the bias trains

    model = build_model("fmnist-net-sw")
    assert len(whitening_layers(model)) == 1
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad  # no update, no weight decay
