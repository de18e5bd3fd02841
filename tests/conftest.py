"""Shared test fixtures: a tiny synthetic Fashion-MNIST folder, the real one, the chapter's text."""

from __future__ import annotations

from pathlib import Path

import pytest

import fakedata
from fakedata import idx_bytes, make_dataset, write_idx  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread avoids OpenMP oversubscription stalls."""
    with fakedata.one_thread():
        yield


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "fmnist", n_train=64, n_test=32)


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "train-images-idx3-ubyte.gz").exists():
        raise RuntimeError("the real Fashion-MNIST is missing: run 'make setup' (installs dataset-fashion-mnist)")
    return REAL_DATA


def chapter_text() -> str:
    """The spec (../shared/spec beside the repo), or the committed copy of its printout."""
    spec = REPO.parent / "shared" / "spec" / "alexnet-chapter.md"
    if spec.exists():
        return spec.read_text(encoding="utf-8")
    return (REPO / "tests" / "data" / "alexnet-chapter.md").read_text(encoding="utf-8")


def pytest_collection_modifyitems(config, items):
    """Every test on the real dataset carries the `slow` marker (for selecting; `make test` runs them)."""
    unmarked = [item.nodeid for item in items
                if "real_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError(f"tests on the real dataset without @pytest.mark.slow: {', '.join(unmarked)}")
