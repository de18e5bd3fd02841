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


# --- augmentation (--augment, for every model) ------------------------------------------------------

def centred_blobs(b=64, side=28):
    """Images with all their mass well inside the frame (so shifts of <= 2 px lose none of it)."""
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(b, 1, side, side)
    x[:, :, 8:20, 6:18] = torch.rand(b, 1, 12, 12, generator=g) * 0.5 + 0.25
    return x


def centroid_x(x):
    cols = torch.arange(x.shape[-1], dtype=x.dtype)
    return (x.sum(dim=(1, 2)) * cols).sum(dim=-1) / x.sum(dim=(1, 2, 3))


def test_augment_flip_only_mirrors_or_keeps_each_image():
    x = centred_blobs()
    out = augment_batch(x, torch.Generator().manual_seed(0), max_shift=0.0, brightness=0.0, contrast=0.0)
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 54  # about half of 64 are flipped


def test_augment_shift_moves_content_by_at_most_two_pixels_and_keeps_its_mass():
    x = centred_blobs()
    out = augment_batch(x, torch.Generator().manual_seed(0), brightness=0.0, contrast=0.0)
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=1e-4)
    # distance of the centroid from the original or from the mirrored original's centroid
    moved = torch.minimum((centroid_x(out) - centroid_x(x)).abs(), (centroid_x(out) - centroid_x(x.flip(-1))).abs())
    assert float(moved.max()) <= 2.0 + 1e-4
    assert float(moved.median()) > 0.2  # shifts actually happen


def test_augment_brightness_contrast_is_an_affine_jitter_within_bounds():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(32, 1, 28, 28, generator=g) * 0.2 + 0.4  # mid-grey: no clamping at 0 or 1
    out = augment_batch(x, torch.Generator().manual_seed(0), max_shift=0.0, brightness=0.2, contrast=0.2)
    for i in range(32):
        # undo the random flip: the source is whichever orientation the output correlates with
        src = x[i] if torch.corrcoef(torch.stack([out[i].flatten(), x[i].flatten()]))[0, 1] > 0.99 else x[i].flip(-1)
        dx, dy = src - src.mean(), out[i] - out[i].mean()
        contrast = float((dx * dy).sum() / (dx * dx).sum())
        assert 0.8 - 1e-4 <= contrast <= 1.2 + 1e-4
        assert torch.allclose(dy, contrast * dx, atol=1e-4)
        assert abs(float(out[i].mean() - src.mean())) <= 0.2 + 1e-4


def test_augmenting_loader_is_reproducible_and_differs_per_epoch():
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    labels = torch.arange(32) % 10
    def batch(epoch, resize=None):
        loader = BatchLoader(images, labels, 8, shuffle=True, augment=True, seed=3, resize=resize)
        loader.set_epoch(epoch)
        return next(iter(loader))[0]
    assert torch.equal(batch(0), batch(0))
    assert not torch.equal(batch(0), batch(1))
    assert batch(0, resize=224).shape == (8, 1, 224, 224)  # augments at 28, then resizes for AlexNet
    plain = BatchLoader(images, labels, 8, shuffle=True, augment=False, seed=3)
    assert not torch.equal(batch(0), next(iter(plain))[0])


# --- the kinds of --augment -------------------------------------------------------------------------

def augment_before_the_kinds(x, generator, max_shift=2.0 / 28, brightness=0.2, contrast=0.2):
    """The reference: `augment_batch` as it was when --augment was a switch (copied unchanged)."""
    import torch.nn.functional as F

    b = x.shape[0]

    def uniform(lo, hi):
        return torch.rand(b, generator=generator) * (hi - lo) + lo

    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = flip
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = uniform(-1, 1) * 2 * max_shift
    theta[:, 1, 2] = uniform(-1, 1) * 2 * max_shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = uniform(1 - contrast, 1 + contrast).view(b, 1, 1, 1)
    br = uniform(-brightness, brightness).view(b, 1, 1, 1)
    return ((x - mean) * c + mean + br).clamp_(0.0, 1.0)


def augment_2012_before_the_kinds(x, eigenvalues, eigenvectors, generator):
    """The reference: the 2012 augmentation as it was when --augment was a switch (copied unchanged)."""
    from alexnet_lab.data.augment_2012 import LIGHTING_STD, crop_side

    b, c, height, width = x.shape
    h, w = crop_side(height), crop_side(width)
    top = torch.randint(0, height - h + 1, (b,), generator=generator)
    left = torch.randint(0, width - w + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.arange(w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + left[:, None]
    rows = torch.arange(h) + top[:, None]
    batch = torch.arange(b)[:, None, None]
    crops = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    alpha = torch.randn(b, c, generator=generator) * LIGHTING_STD
    shift = (alpha * eigenvalues) @ eigenvectors.T
    crops = crops + shift[:, None, None, :]
    return crops.permute(0, 3, 1, 2).clamp(0.0, 1.0).contiguous()


def test_the_presets_named_kinds_augment_exactly_as_the_switch_did():
    """`augment=True` became the presets' "flip+translate+jitter" (and alexnet-2012's "crop+flip+lighting"):
    the same batches, bit for bit, for the same seed as the code before the kinds."""
    from alexnet_lab.data.augment_2012 import color_pca
    from alexnet_lab.data.loader import apply_augmentation
    from alexnet_lab.engine.config import PRESETS, make_config

    x = to_float_batch(_images(32)[0], None)
    kinds = tuple(make_config("best").augment.split("+"))
    assert kinds == ("flip", "translate", "jitter")
    assert {PRESETS[name].get("augment") for name in ("best", "speedrun-95")} == {"flip+translate+jitter"}
    for seed in range(3):
        ours = apply_augmentation(x, kinds, torch.Generator().manual_seed(seed))
        assert torch.equal(ours, augment_before_the_kinds(x, torch.Generator().manual_seed(seed)))

    rgb = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pca = color_pca(rgb)
    kinds_2012 = tuple(make_config("d2l", model="alexnet-2012", augment=True, channels=3).augment.split("+"))
    assert kinds_2012 == ("crop", "flip", "lighting")
    for seed in range(3):
        ours = apply_augmentation(to_float_batch(rgb, None), kinds_2012, torch.Generator().manual_seed(seed), pca)
        ref = augment_2012_before_the_kinds(to_float_batch(rgb, None), *pca, torch.Generator().manual_seed(seed))
        assert torch.equal(ours, ref)


def test_a_loader_given_the_old_switch_or_the_kinds_it_meant_gives_the_same_batches():
    images, labels = _images(40)

    def batches(**augment):
        loader = BatchLoader(images, labels, 16, shuffle=True, seed=7, resize=32, **augment)
        loader.set_epoch(1)
        return [x for x, _ in loader]

    switched, named = batches(augment=True), batches(augment="flip+translate+jitter")
    assert all(torch.equal(a, b) for a, b in zip(switched, named)) and len(named) == 3
    assert not torch.equal(named[0], batches(augment="none")[0])
    assert all(torch.equal(a, b) for a, b in zip(batches(augment=False), batches(augment="none")))


def left_bars(n=32):
    """(n, 1, 28, 28) images that are bright only in columns 2..7: a mirror image is bright on the right."""
    x = torch.zeros(n, 1, 28, 28)
    x[..., 4:24, 2:8] = 1.0
    return x


def test_translate_alone_never_mirrors_and_flip_alone_only_mirrors():
    from alexnet_lab.data.loader import apply_augmentation

    x = left_bars()

    def on_the_left(kinds):
        moved = apply_augmentation(x, kinds, torch.Generator().manual_seed(0))
        left, right = moved[..., :14].sum(dim=(1, 2, 3)), moved[..., 14:].sum(dim=(1, 2, 3))
        return left > 0.95 * (left + right)

    assert bool(on_the_left(("translate",)).all())  # every image keeps its bar on the left
    assert not torch.equal(apply_augmentation(x, ("translate",), torch.Generator().manual_seed(0)), x)  # shifted
    assert 6 < int(on_the_left(("flip", "translate")).sum()) < 26  # with flips, about half move it right
    flipped = apply_augmentation(x, ("flip",), torch.Generator().manual_seed(0))
    mirrored = torch.tensor([torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x)])
    kept = torch.tensor([torch.equal(f, i) for f, i in zip(flipped, x)])
    assert bool((mirrored | kept).all()) and 6 < int(mirrored.sum()) < 26  # exact mirror images, about half


def test_crop_takes_random_crops_and_evaluation_the_centre_crop_for_any_model():
    from alexnet_lab.data.augment_2012 import center_crop

    images, labels = _images(8)
    train = BatchLoader(images, labels, 8, shuffle=False, resize=None, augment="crop")
    x, _ = next(iter(train))
    assert x.shape == (8, 1, 24, 24)  # 224/256 of 28
    originals = images.float().unsqueeze(1) / 255
    for crop, image in zip(x, originals):  # a crop of the image, never mirrored
        assert any(torch.equal(crop, image[:, t:t + 24, l:l + 24]) for t in range(5) for l in range(5))
    test = BatchLoader(images, labels, 8, shuffle=False, resize=None, center_crop=True)
    torch.testing.assert_close(next(iter(test))[0], center_crop(originals))
