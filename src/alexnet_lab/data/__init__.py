"""Data: Fashion-MNIST (IDX reader, download) and image folders (manifest, decoding), one source door, and
the batch pipeline: in memory (loader.py) or streamed from files by worker processes (streaming.py)."""

from alexnet_lab.data.fashion_mnist import CLASS_NAMES, NUM_CLASSES, FashionMNIST, load_fashion_mnist
from alexnet_lab.data.idx import read_idx
from alexnet_lab.data.loader import BatchLoader, augment_batch, to_float_batch

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "FashionMNIST", "load_fashion_mnist", "read_idx",
           "BatchLoader", "augment_batch", "to_float_batch"]
