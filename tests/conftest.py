"""Shared test fixtures: tiny synthetic Fashion-MNIST folders, a trained LeNet checkpoint, the settings for
running `train` in a test, the real data set, the chapter's text."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest
from hypothesis import settings

import fakedata
import suite
from fakedata import idx_bytes, make_dataset, write_idx  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, one thread each (and
    os.environ["OMP_NUM_THREADS"] = "1"    # their child processes), set before any test imports torch
STILL_RUNNING_S = 20  # a test running longer than this is named on the terminal while it runs

# Hypothesis: "ci" is hypothesis's defaults (CI=true); "dev" (make test) draws fewer examples for the tests
# that do not size themselves with suite.examples(n). Deadlines off: a shared 2-core machine is noisy.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=suite.examples(100), deadline=None)
settings.load_profile("ci" if suite.THOROUGH else "dev")
REAL_DATA = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session", autouse=True)
def private_user_cache(tmp_path_factory):
    """The tests never write to the user's own cache (~/.cache/alexnet-lab: the numerics measured by
    engine/numerics.py, image-folder manifests); subprocesses inherit the session's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread avoids OpenMP oversubscription stalls."""
    with fakedata.one_thread():
        yield


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "fmnist", n_train=64, n_test=32)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """64 train / 32 test images: 2 steps per epoch at batch 32. Shared: copy it before changing it."""
    return make_dataset(tmp_path_factory.mktemp("fmnist-64"), n_train=64, n_test=32)


@pytest.fixture(scope="session")
def data_dir_512(tmp_path_factory) -> Path:
    """512 train / 64 test images: 16 steps per epoch at batch 32 (log every 3 steps). Shared, read-only."""
    return make_dataset(tmp_path_factory.mktemp("fmnist-512"), n_train=512, n_test=64)


@pytest.fixture
def bar_data_dir(tmp_path) -> Path:
    """A Fashion-MNIST-shaped folder (IDX .gz files) whose labels are visible in the pixels."""
    return make_dataset(tmp_path / "fmnist", **fakedata.bar_arrays())


@pytest.fixture(scope="session")
def lenet_checkpoint(data_dir_512, tmp_path_factory) -> Path:
    """LeNet trained for 1 epoch (8 steps at batch 64) on `data_dir_512`: its checkpoint.pt."""
    from alexnet_lab.engine.config import make_config
    from alexnet_lab.engine.run_dir import RunWriter
    from alexnet_lab.engine.trainer import fit

    out = tmp_path_factory.mktemp("trained")
    config = make_config("d2l", model="lenet", epochs=1, batch_size=64, device="cpu", data_dir=str(data_dir_512))
    with fakedata.one_thread():
        fit(config, [RunWriter(out, config.to_dict())])
    return out / "checkpoint.pt"


@pytest.fixture
def offline_private_cache(tmp_path, monkeypatch):
    """No downloads (Fashion-MNIST read by mistake fails loudly), a private image cache, one intra-op thread."""
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with fakedata.one_thread():
        yield


@pytest.fixture
def offline_cli(monkeypatch):
    """For tests that run `train`: no downloads; one intra-op thread (on a shared 2-core machine 2 threads
    run ~10x slower); curves written as empty files (matplotlib costs ~0.5 s a figure; figures are tested
    in test_plots.py and test_report.py)."""
    import alexnet_lab.cli.running as cli_train

    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    monkeypatch.setattr(cli_train, "plot_curves", lambda runs, paths, title: [Path(p).touch() for p in paths])
    with fakedata.one_thread():
        yield


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
    """Every test on the real dataset carries the `slow` marker (for selecting; `make test` runs them);
    tests marked `cuda` are skipped, with the reason shown, where no CUDA GPU is visible."""
    _skip_cuda_tests_without_a_gpu(items)
    if not suite.THOROUGH:
        skip = pytest.mark.skip(reason=suite.SKIP_REASON)
        for item in items:
            if item.get_closest_marker("thorough") is not None:
                item.add_marker(skip)
    unmarked = [item.nodeid for item in items
                if "real_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError(f"tests on the real dataset without @pytest.mark.slow: {', '.join(unmarked)}")


def _skip_cuda_tests_without_a_gpu(items) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: torch {torch.__version__} sees none "
                                   "(torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


_RUNNING: dict[str, threading.Timer] = {}  # nodeid -> its still-running note, on the process that prints
_CONFIG = []


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the process that prints (with -n N: the controller, not a worker)
        _CONFIG.append(config)


def pytest_runtest_logstart(nodeid, location):
    """A test that runs longer than STILL_RUNNING_S is named on the terminal while it runs (with -q the
    suite otherwise shows only dots); with pytest-xdist the controller hears of each start and end."""
    reporter = _CONFIG[0].pluginmanager.get_plugin("terminalreporter") if _CONFIG else None
    if reporter is None:
        return
    capture = _CONFIG[0].pluginmanager.get_plugin("capturemanager")

    def say() -> None:  # (in one process the test's output is being captured: the note goes past it)
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write(f"\n  [still running after {STILL_RUNNING_S} s: {nodeid}]\n", yellow=True, flush=True)

    timer = threading.Timer(STILL_RUNNING_S, say)
    timer.daemon = True
    _RUNNING[nodeid] = timer
    timer.start()


def pytest_runtest_logfinish(nodeid, location):
    timer = _RUNNING.pop(nodeid, None)
    if timer is not None:
        timer.cancel()
