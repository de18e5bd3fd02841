import gzip

import numpy as np
import pytest

from alexnet_lab import UserError
from alexnet_lab.data import load_fashion_mnist, read_idx
from conftest import idx_bytes, make_dataset, write_idx


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=np.int32)
    (tmp_path / "v").write_bytes(idx_bytes(values, type_code=0x0C))
    np.testing.assert_array_equal(read_idx(tmp_path / "v"), values)


def test_read_idx_truncated_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="damaged or truncated gzip"):
        read_idx(path)


def test_load_synthetic_folder_plain_and_gz(tmp_path):
    for gz in (True, False):
        folder = make_dataset(tmp_path / f"d{gz}", n_train=20, n_test=10, gz=gz)
        ds = load_fashion_mnist(folder)
        assert ds.train_images.shape == (20, 28, 28) and ds.train_images.dtype == np.uint8
        assert ds.train_labels.dtype == np.int64 and ds.test_labels.shape == (10,)


def test_count_mismatch_and_label_range(tmp_path):
    folder = make_dataset(tmp_path / "d", n_train=20, n_test=10)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(UserError, match="count mismatch"):
        load_fashion_mnist(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(20, 10, np.uint8))
    with pytest.raises(UserError, match="outside 0..9"):
        load_fashion_mnist(folder)


@pytest.mark.slow  # real Fashion-MNIST
def test_real_fashion_mnist(real_data):
    ds = load_fashion_mnist(real_data)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10  # the official class balance
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
