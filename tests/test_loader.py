import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_lab import UserError
from alexnet_lab.data import BatchLoader, augment_batch, to_float_batch


def _images(n=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen), torch.arange(n) % 10


def test_to_float_batch_is_totensor():
    x = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    out = to_float_batch(x, None)
    assert out.shape == (1, 1, 2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))


def test_resize_matches_pil_bilinear_upscaling():
    images, _ = _images(4)
    ours = to_float_batch(images, 224)
    for i in range(4):  # PIL is what torchvision's Resize uses in the book's pipeline
        ref = np.asarray(Image.fromarray(images[i].numpy()).resize((224, 224), Image.BILINEAR), np.float32) / 255
        # PIL rounds to uint8 and uses fixed-point weights: within ~1 grey level
        assert np.abs(ours[i, 0].numpy() - ref).max() <= 1.5 / 255


def test_each_epoch_is_a_permutation_reproducible_by_seed_and_epoch():
    images, labels = _images(50)
    loader = BatchLoader(images, labels, 8, shuffle=True, seed=3)
    assert len(loader) == 7 and loader.num_examples == 50
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == sorted(labels.tolist()) and len(seen) == 50
    first = [y.tolist() for _, y in loader]
    assert first == [y.tolist() for _, y in loader]  # same epoch, same order
    loader.set_epoch(1)
    assert first != [y.tolist() for _, y in loader]
    loader.set_epoch(0)
    assert [y.tolist() for _, y in loader.iterate(start_batch=3)] == first[3:]


def test_shards_are_disjoint_and_cover_the_epoch():
    images, _ = _images(40)
    ids = torch.arange(40)
    shards = [torch.cat([y for _, y in BatchLoader(images, ids, 4, shuffle=True, seed=1, rank=r, world_size=2)])
              for r in range(2)]
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(40))


def test_batches_carry_matching_images_and_labels():
    images, _ = _images(30)
    ids = torch.arange(30)
    for x, y in BatchLoader(images, ids, 7, shuffle=True, resize=None, seed=5):
        torch.testing.assert_close(x[:, 0], images[y].float() / 255)


def test_augment_keeps_shape_range_and_changes_images():
    images, labels = _images(16)
    x = to_float_batch(images, None)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)
    batch, _ = next(iter(BatchLoader(images, labels, 16, shuffle=False, resize=64, augment=True)))
    assert batch.shape == (16, 1, 64, 64)


def test_zero_batch_size_is_a_user_error():
    images, labels = _images(4)
    with pytest.raises(UserError):
        BatchLoader(images, labels, 0, shuffle=False)
