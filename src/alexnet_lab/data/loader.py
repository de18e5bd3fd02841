"""The one batch pipeline (airbench style) used by train, evaluate, bench and the d2l API.

uint8 images live in memory once (on the GPU when there is one); each batch is an index into a
permutation, converted to float, resized and augmented with tensor ops on the device. (An image folder
too large for memory streams through the same batches: data/streaming.py.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alexnet_lab.data import augment_2012
from alexnet_lab.data.imagefolder import pixels
from alexnet_lab.errors import UserError

# Derived generator seeds are taken modulo 2**63 (manual_seed takes at most 64 bits); the seeds
# of small --seed values are below it, so the modulus changes nothing for them.
SEED_MODULUS = 2**63


def to_float_batch(images_u8: torch.Tensor, resize: int | None, center_crop: bool = False) -> torch.Tensor:
    """(B, H, W) or (B, C, H, W) uint8 -> (B, C, S, S) float32 in [0, 1] (ToTensor semantics, no
    normalisation); `center_crop`: first the centre crop the 2012 augmentation evaluates on.

    Resizing is bilinear with half-pixel centres (align_corners=False), like PIL's bilinear
    resize that torchvision's Resize applies in the book's pipeline when upscaling.
    """
    x = images_u8.unsqueeze(1) if images_u8.ndim == 3 else images_u8
    x = x.float().div_(255.0)  # (B, C, H, W)
    if center_crop:
        x = augment_2012.center_crop(x)
    if resize is not None and resize != x.shape[-1]:
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    return x


# The kinds of augmentation --augment combines (joined by "+", applied in this order), each batched on
# the device. crop: a random crop of 224/256 of the side (the 2012 paper's; evaluation takes the centre
# crop); flip: a horizontal mirror image with probability 1/2; translate: a random shift of up to
# 2/28 of the side; jitter: brightness and contrast jitter; lighting: the paper's PCA lighting; altflip:
# airbench's alternating flip, each image mirrored in every other epoch (a seeded half of the images
# in even epochs, the other half in odd ones), in place of flip's coin toss per image and epoch.
AUGMENT_KINDS = ("crop", "flip", "altflip", "translate", "jitter", "lighting")
EXCLUSIVE_KINDS = (("flip", "altflip"), ("crop", "altflip"))  # two ways of flipping: one at a time
NO_AUGMENT = "none"
# What `--augment` alone (and `augment: true` in a config of an older version) means, by the model's
# registered augmentation (models/registry.py): the kinds the single switch used to turn on.
MODEL_AUGMENTS = {"shift": "flip+translate+jitter", "alexnet-2012": "crop+flip+lighting"}


def augment_kinds(augment: bool | str, augmentation: str = "shift") -> tuple[str, ...]:
    """The kinds `augment` names: "none" or False: none; True: the model's own (`MODEL_AUGMENTS`);
    else "+"-joined kinds of AUGMENT_KINDS."""
    if augment is True:
        augment = MODEL_AUGMENTS[augmentation]
    if augment is False or augment == NO_AUGMENT:
        return ()
    kinds = tuple(augment.split("+"))
    unknown = [k for k in kinds if k not in AUGMENT_KINDS]
    if unknown or not kinds or any(set(pair) <= set(kinds) for pair in EXCLUSIVE_KINDS):
        raise ValueError(f"unknown augmentation {augment!r}")
    return kinds


def alternating_flips(flip_half: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images of a batch altflip mirrors: `flip_half` (N,) bool marks the images mirrored in even
    epochs; odd epochs mirror the others. `indices`: the batch's positions in the split."""
    flipped = flip_half.index_select(0, indices)
    return ~flipped if epoch % 2 else flipped


def mirror(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) with the images where `which` (B,) is true mirrored left to right: exact, no resampling."""
    return torch.where(which.view(-1, 1, 1, 1), x.flip(-1), x)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None,
                  max_shift: float = 2.0 / 28, brightness: float = 0.2, contrast: float = 0.2, *,
                  flip: bool = True, translate: bool = True, jitter: bool = True) -> torch.Tensor:
    """Random horizontal flip, shift and brightness/contrast jitter (each when asked), batched on x's device.

    x: (B, C, H, W) float in [0, 1]. `max_shift` is a fraction of the image side. Every call draws
    the same random numbers in the same order whichever kinds it applies, so `flip=True,
    translate=True` flips and shifts exactly as all three kinds do for the same generator state.
    """
    b = x.shape[0]
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device=dev) * (hi - lo) + lo

    mirrored = uniform(0, 1) < 0.5
    shift_x, shift_y = uniform(-1, 1) * 2 * max_shift, uniform(-1, 1) * 2 * max_shift  # grid units: 2 per side
    c = uniform(1 - contrast, 1 + contrast).view(b, 1, 1, 1)
    br = uniform(-brightness, brightness).view(b, 1, 1, 1)
    if translate:
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = torch.where(mirrored, -1.0, 1.0) if flip else 1.0  # x' = flip * x + tx
        theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = shift_x
        theta[:, 1, 2] = shift_y
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    elif flip:
        x = mirror(x, mirrored)
    if not jitter:
        return x
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean + br).clamp_(0.0, 1.0)


def apply_augmentation(x: torch.Tensor, kinds: tuple[str, ...], generator: torch.Generator | None = None,
                       color_pca: tuple[torch.Tensor, torch.Tensor] | None = None,
                       flipped: torch.Tensor | None = None) -> torch.Tensor:
    """x: (B, C, H, W) float in [0, 1] -> `kinds` applied in AUGMENT_KINDS's order: (B, C, h, w), h < H
    after a crop. A crop takes the flip along (mirrored reads); `color_pca` (lighting): augment_2012.color_pca;
    `flipped` (altflip): which images to mirror (alternating_flips)."""
    if "altflip" in kinds:
        x = mirror(x, flipped)
    if "crop" in kinds:
        x = augment_2012.random_crops(x, generator, flip="flip" in kinds)
    flip = "flip" in kinds and "crop" not in kinds
    if flip or "translate" in kinds or "jitter" in kinds:
        x = augment_batch(x, generator, flip=flip, translate="translate" in kinds, jitter="jitter" in kinds)
    if "lighting" in kinds:
        x = augment_2012.pca_lighting(x, *color_pca, generator)
    return x


class BatchLoader:
    """Iterates (images, labels) batches of one split.

    images: (N, H, W) or (N, C, H, W) uint8 tensor, labels: (N,) int64. `batch_size` is the
    per-rank batch. `augment`: the kinds of augmentation ("flip+translate", see AUGMENT_KINDS), "none"
    or False for none, True for the model's own, which `augmentation` names ("shift" or
    "alexnet-2012", MODEL_AUGMENTS); `center_crop` makes evaluation take the centre crop that the
    random crops ("crop") correspond to.
    With `world_size > 1` the epoch's permutation is cut into global batches of
    batch_size * world_size examples and rank r takes the r-th slice of each, so the ranks' shards
    are disjoint and global batch k holds the same examples whatever the number of processes: a
    run resumes at batch k under a different world size.
    The last, partial global batch: `even_shards=True` (training) splits it equally, dropping its
    remainder modulo world_size (< world_size examples per epoch) so every rank averages gradients
    over equal batches; `even_shards=False` (evaluation) splits it as evenly as possible so that
    every example is seen exactly once. `drop_last` drops the partial global batch altogether.
    `set_epoch(e)` makes the order a pure function of (seed, epoch), so a run can resume mid-epoch
    with `iterate(start_batch=k)`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 shuffle: bool, resize: int | None = None, device: torch.device | str = "cpu",
                 augment: bool | str = False, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, even_shards: bool = True,
                 augmentation: str = "shift", center_crop: bool = False):
        if batch_size < 1:
            raise UserError(f"Batch size must be at least 1, got {batch_size}.")
        self.device = torch.device(device)
        self.images, self.labels = self._hold(images, labels)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.resize = resize
        if augmentation not in MODEL_AUGMENTS:
            raise ValueError(f"unknown augmentation {augmentation!r}")
        self.kinds = augment_kinds(augment, augmentation)
        self.augment = bool(self.kinds)
        self.seed = seed
        self.drop_last = drop_last
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside 0..{world_size - 1}.")
        self.rank, self.world_size = rank, world_size
        self.even_shards = even_shards
        self.epoch = 0
        self.center_crop = center_crop
        # the colour statistics PCA lighting follows
        self.color_pca = None
        if "lighting" in self.kinds:
            self.color_pca = augment_2012.color_pca(pixels(self.images, augment_2012.pca_sample(len(self.images))))
        # altflip: the images mirrored in even epochs, a seeded half (the same on every rank)
        self.flip_half = None
        if "altflip" in self.kinds:
            gen = torch.Generator().manual_seed((self.seed * 100_003 + 7) % SEED_MODULUS)
            n = len(self.images)
            self.flip_half = (torch.randperm(n, generator=gen) < n // 2).to(self.index_device)

    def _hold(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split moves to the device once; labels too (47 MB for Fashion-MNIST train)."""
        on_gpu = self.device.type != "cpu"
        return (images.to(self.device), labels.to(self.device)) if on_gpu else (images, labels)

    @property
    def index_device(self) -> torch.device:
        """Where the epoch's order lives: beside the images, so that a batch is a gather there."""
        return self.device

    def _batch_bounds(self) -> list[tuple[int, int]]:
        """(start, end) of this rank's slice of every global batch, as positions in the epoch's order."""
        n, per_rank = len(self.images), self.batch_size
        global_batch = per_rank * self.world_size
        full, rest = divmod(n, global_batch)
        bounds = [(i * global_batch + self.rank * per_rank, i * global_batch + (self.rank + 1) * per_rank)
                  for i in range(full)]
        if rest and not self.drop_last:
            base = full * global_batch
            if self.even_shards:
                share = rest // self.world_size  # the same for every rank; drops rest % world_size
                lo, hi = base + self.rank * share, base + (self.rank + 1) * share
                if share:
                    bounds.append((lo, hi))
            else:  # every example once; shares differ by at most one (some may be empty)
                lo = base + rest * self.rank // self.world_size
                hi = base + rest * (self.rank + 1) // self.world_size
                bounds.append((lo, hi))
        return bounds

    def positions(self) -> torch.Tensor:
        """Where this rank's examples of the epoch sit in the split, in the order `iterate` yields them
        (how an evaluation puts each process's results in place)."""
        order = self._order()
        return torch.cat([order[lo:hi] for lo, hi in self._batch_bounds()] or [order[:0]])

    @property
    def num_examples(self) -> int:
        """Examples this rank sees per epoch."""
        return sum(hi - lo for lo, hi in self._batch_bounds())

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return len(self._batch_bounds())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = len(self.images)
        if self.shuffle:
            gen = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % SEED_MODULUS)
            return torch.randperm(n, generator=gen)
        return torch.arange(n)

    def iterate(self, start_batch: int = 0):
        """The epoch's batches from global batch `start_batch` on, as (float images, labels) on the device."""
        order = self._order().to(self.index_device)
        plan = [(i, order[lo:hi]) for i, (lo, hi) in enumerate(self._batch_bounds())
                if i >= start_batch and hi > lo]  # (hi == lo: an empty share of the last evaluation batch)
        aug_gen = torch.Generator(device=self.device) if self.augment else None
        for (i, idx), (x, y) in zip(plan, self._gather(plan)):
            yield self._prepare(i, idx, x, y, aug_gen)

    def _gather(self, plan):
        """The uint8 images and labels of each planned (batch number, positions)."""
        for _, idx in plan:
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)  # on the device: no host sync

    def _prepare(self, i: int, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor, aug_gen):
        """Batch number `i` (`idx`: its positions in the split) to float at the input size, augmented."""
        if not self.augment:
            return to_float_batch(x, self.resize, self.center_crop), y
        # Seeded per batch, so batch i draws the same augmentation whether or not the
        # epoch was resumed at start_batch > 0 (bit-exact resume).
        aug_gen.manual_seed((((self.seed * 100_003 + self.epoch) * 100_003 + i) * 64 + self.rank) % SEED_MODULUS)
        flipped = None
        if self.flip_half is not None:
            flipped = alternating_flips(self.flip_half, idx, self.epoch).to(x.device, non_blocking=True)
        # augment at the stored size (28x28 for Fashion-MNIST), then resize
        x = apply_augmentation(to_float_batch(x, None), self.kinds, aug_gen, self.color_pca, flipped)
        if self.resize is not None and self.resize != x.shape[-1]:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x, y

    def __iter__(self):
        return self.iterate(0)
