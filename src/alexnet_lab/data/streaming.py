"""Streaming: an image folder too large for memory, decoded by `torch.utils.data` worker processes as
the batches need them, with the in-memory pipeline's order, shards, augmentation and resume.

`StreamingLoader` is a `BatchLoader` whose batches are gathered from files instead of from a tensor:
the epoch's seeded permutation and each rank's slice of every global batch are BatchLoader's, the
workers decode and resize each batch's files on the host (pinned when the device is a CUDA GPU), and the
augmentation runs per batch on the device as in memory. So a run streams or holds its images in memory
with bit-identical results, and resumes mid-epoch at any global batch either way.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch.utils.data import DataLoader, Dataset

from alexnet_lab.data.imagefolder import FileSplit
from alexnet_lab.data.loader import BatchLoader
from alexnet_lab.errors import UserError

MAX_WORKERS = 16  # worker processes per training process (torchvision's reference recipe uses 16)
PREFETCH_BATCHES = 2  # batches each worker decodes ahead (DataLoader's prefetch_factor)


def default_workers(local_processes: int = 1) -> int:
    """Worker processes for each of `local_processes` training processes on this machine: its CPUs
    shared between them (at least one each, at most MAX_WORKERS)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus // max(1, local_processes)))


class _DecodedFiles(Dataset):
    """Image i of a FileSplit, as a worker decodes it: (uint8 (C, S, S), label, why it was replaced or "")."""

    def __init__(self, files: FileSplit):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image, label, replaced = self.files.load(i)
        return torch.from_numpy(image), label, replaced


class _EpochBatches:
    """The workers' batch sampler: the positions of each batch still to come this epoch, set before each pass."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamingLoader(BatchLoader):
    """BatchLoader over a FileSplit: the same arguments, plus `workers` (processes decoding files;
    0: in this process). The workers persist across epochs; each holds PREFETCH_BATCHES batches ready."""

    def __init__(self, images: FileSplit, labels: torch.Tensor, batch_size: int, *, workers: int, **options):
        self.workers = workers
        self._batches = _EpochBatches()
        self._loader: DataLoader | None = None
        super().__init__(images, labels, batch_size, **options)

    def _hold(self, images: FileSplit, labels: torch.Tensor) -> tuple[FileSplit, torch.Tensor]:
        return images, labels  # files, decoded batch by batch

    @property
    def index_device(self) -> torch.device:
        return torch.device("cpu")  # the workers are told which files to read

    def _gather(self, plan):
        """Each planned batch decoded by the workers, moved to the device (asynchronously from pinned memory)."""
        if self._loader is None:
            self._loader = DataLoader(_DecodedFiles(self.images), batch_sampler=self._batches,
                                      num_workers=self.workers, persistent_workers=self.workers > 0,
                                      prefetch_factor=PREFETCH_BATCHES if self.workers else None,
                                      pin_memory=self.device.type == "cuda",
                                      # its own generator: each new iterator draws a seed for the workers,
                                      # which from torch's global one would shift dropout after a resume
                                      generator=torch.Generator().manual_seed(self.seed))
        self._batches.batches = [idx.tolist() for _, idx in plan]
        try:
            for (_, idx), (x, y, replaced) in zip(plan, self._loader):
                for position, reason in zip(idx.tolist(), replaced):
                    if reason:  # shown once per file (the warnings module's registry)
                        warnings.warn(f"{reason} Image {position} of the split was replaced by the next one "
                                      "that decodes: streamed files are checked by their header before "
                                      "training, so --strict cannot refuse this one.", RuntimeWarning, stacklevel=2)
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except UserError as exc:
            if "Original Traceback" not in str(exc):
                raise
            # raised in a worker: torch put the worker's traceback before the message, on its last line
            raise UserError(str(exc).rstrip().splitlines()[-1].split(": ", 1)[-1]) from None


def batch_loader(images: torch.Tensor | FileSplit, labels: torch.Tensor, batch_size: int, *, workers: int,
                 **options) -> BatchLoader:
    """The loader of a split: `BatchLoader` over images in memory, `StreamingLoader` over files."""
    if isinstance(images, FileSplit):
        return StreamingLoader(images, labels, batch_size, workers=workers, **options)
    return BatchLoader(images, labels, batch_size, **options)
