"""The book's input pipeline and step re-created as `bench`'s baseline, with PIL, numpy and torch.utils.data only:
a PIL image per item, Resize + ToTensor, 4 DataLoader workers; train_ch6's fp32 step with a host sync per step."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from alexnet_lab.engine.step import book_step

D2L_NUM_WORKERS = 4  # d2l.get_dataloader_workers()


def pil_resize(image: Image.Image, size: int) -> Image.Image:
    """torchvision.transforms.Resize(size) on a square PIL image: PIL's bilinear resize."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.BILINEAR)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision.transforms.ToTensor on an 8-bit grey image: (1, H, W) float32 in [0, 1]."""
    array = np.array(image, dtype=np.uint8, copy=True)   # (H, W)
    return torch.from_numpy(array).unsqueeze(0).float().div(255)


class PILFashionMNIST(Dataset):
    """Like torchvision.datasets.FashionMNIST: each item is built from a PIL image, one at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, resize: int | None):
        self.images = images      # (N, 28, 28) uint8
        self.labels = labels      # (N,) int64
        self.resize = resize

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])  # a (28, 28) uint8 array is an 8-bit grey image
        if self.resize is not None:
            image = pil_resize(image, self.resize)
        return to_tensor(image), int(self.labels[index])


class BookDataLoader(DataLoader):
    """torch's DataLoader without its warning that the workers outnumber the CPUs: the book's 4 are
    kept on purpose (bench compares against the book's pipeline), and `bench` says so once itself."""

    def check_worker_number_rationality(self) -> None:
        pass


def reference_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, resize: int | None,
                     device: torch.device, num_workers: int = D2L_NUM_WORKERS,
                     seed: int = 0) -> DataLoader:
    """d2l's training DataLoader (shuffled, `num_workers` processes); pinned memory only on CUDA."""
    return BookDataLoader(PILFashionMNIST(images, labels, resize), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def reference_step(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                   images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """d2l.train_ch6's step (`book_step`) and its host-device sync per step: the book's Accumulator.add
    converts the loss and the correct count to Python floats at every step."""
    loss_sum, correct = book_step(model, loss_fn, optimizer, images, labels, device)
    return float(loss_sum), float(correct)
