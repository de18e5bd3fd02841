import shutil

import numpy as np
import pytest

from alexnet_lab import UserError
from alexnet_lab.data import fashion_mnist as fm
from conftest import make_dataset


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(fm.ENV_DIR, raising=False)
    monkeypatch.delenv(fm.ENV_OFFLINE, raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")


def test_search_order_env_then_cache(tmp_path, monkeypatch):
    env_dir = make_dataset(tmp_path / "env", n_train=11)
    cache = make_dataset(fm.user_cache_dir(), n_train=12)
    assert fm.locate() == cache
    monkeypatch.setenv(fm.ENV_DIR, str(env_dir))
    assert fm.locate() == env_dir
    assert len(fm.load_fashion_mnist().train_images) == 11
    assert fm.locate(cache) == cache  # an explicit root wins


def test_debian_dir_used_when_nothing_else(tmp_path, monkeypatch):
    debian = make_dataset(tmp_path / "debian")
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    assert fm.locate() == debian


def test_offline_and_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(fm.ENV_OFFLINE, "1")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fm.locate()


@pytest.mark.slow  # real Fashion-MNIST, through a file:// mirror
def test_download_from_mirror_verifies_checksums(tmp_path, monkeypatch, real_data, capsys):
    mirror = tmp_path / "mirror"
    shutil.copytree(real_data, mirror)
    monkeypatch.setenv(fm.ENV_MIRROR, mirror.as_uri() + "/")
    target = tmp_path / "downloaded"
    ds = fm.load_fashion_mnist(target)  # incomplete explicit root: downloaded into it
    err = capsys.readouterr().err  # not a terminal: one plain line per file, no progress bar
    assert err.count("Downloading file://") == 4 and "\r" not in err
    assert ds.source == str(target)
    assert ds.train_images.shape == (60000, 28, 28)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in real_data.iterdir())


def test_class_names():
    assert len(fm.CLASS_NAMES) == 10 and fm.CLASS_NAMES[0] == "t-shirt" and fm.CLASS_NAMES[9] == "ankle boot"
    assert np.unique(fm.CLASS_NAMES).size == 10
