"""Streaming an image folder: worker processes decode each batch's files, in the in-memory pipeline's
order, shards and augmentation; resume mid-epoch; bad files; the manifest (its cache, the fingerprint a
resume checks); the choice between memory and streaming. Tiny generated folders, CPU, offline.
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
import torch

from alexnet_lab.cli import main
from alexnet_lab.data import manifest
from alexnet_lab.data.imagefolder import FileSplit, load_image_folder
from alexnet_lab.data.loader import BatchLoader
from alexnet_lab.data.sources import load_source
from alexnet_lab.data.streaming import StreamingLoader
from alexnet_lab.engine import preflight
from alexnet_lab.engine.builders import splits_for, whitening_images
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.trainer import StopRequested
from alexnet_lab.errors import UserError
from imagedata import make_shapes
from runhelpers import StopAt, assert_same_run, run_fit

THREE = ("circle", "cross", "square")

pytestmark = pytest.mark.usefixtures("offline_private_cache")  # conftest.py: a private manifest cache


@pytest.fixture
def folder(tmp_path):
    """36 small images of 3 classes: 30 train / 6 val by the stratified split."""
    return make_shapes(tmp_path / "shapes", per_class=12, classes=THREE)


def positions_seen(loader, reference_images: torch.Tensor) -> list[list[int]]:
    """Each batch of `loader` (no resize, no augmentation) as the positions of its images in
    `reference_images` (uint8, decoded independently), found by their pixels."""
    where = {bytes(image.numpy()): p for p, image in enumerate(reference_images)}
    return [[where[bytes((x * 255).round().to(torch.uint8).numpy())] for x in images] for images, _ in loader]


def test_streamed_batches_are_the_seeded_permutation_of_every_image_once_per_epoch(folder):
    memory = load_image_folder(folder, 16)
    streamed = load_image_folder(folder, 16, stream=True)
    assert isinstance(streamed.train_images, FileSplit) and streamed.decoded is None
    n = len(memory.train_images)
    loader = StreamingLoader(streamed.train_images, streamed.train_labels, 7, shuffle=True, seed=5, workers=2)
    reference = BatchLoader(memory.train_images, memory.train_labels, 7, shuffle=True, seed=5)
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        batches = positions_seen(loader, memory.train_images)
        seen = [p for batch in batches for p in batch]
        assert sorted(seen) == list(range(n))  # every image exactly once
        assert batches == positions_seen(reference, memory.train_images)  # the in-memory pipeline's order
        assert [labels.tolist() for _, labels in loader] == [memory.train_labels[b].tolist() for b in batches]
        orders.append(seen)
    assert orders[0] != orders[1]  # a new permutation each epoch
    assert len(loader) == 5 and loader.num_examples == n


def test_two_ranks_take_disjoint_shards_that_form_the_single_process_batches(folder):
    memory = load_image_folder(folder, 16)
    files = load_image_folder(folder, 16, stream=True).train_images
    n = len(files)  # 30: global batch 8 leaves 6, split 3 and 3

    def batches(batch_size, **sharding):
        loader = StreamingLoader(files, torch.from_numpy(files.labels), batch_size, shuffle=True, seed=1,
                                 workers=1, **sharding)
        return positions_seen(loader, memory.train_images)

    single = batches(8)
    for even_shards in (True, False):
        ranks = [batches(4, rank=r, world_size=2, even_shards=even_shards) for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == 4
        for k, (a, b) in enumerate(zip(*ranks)):
            assert not set(a) & set(b) and a + b == single[k]  # global batch k, whatever the processes
        assert sorted(p for r in ranks for b in r for p in b) == list(range(n))


def test_resuming_at_a_batch_yields_exactly_the_remaining_augmented_batches(folder):
    """With the 2012 augmentation (random crops, flips, PCA lighting seeded per batch), a fresh loader
    started at batch 2 of epoch 1 gives the uninterrupted epoch's batches 2, 3, ...; and those of memory."""
    streamed, memory = load_image_folder(folder, 16, stream=True), load_image_folder(folder, 16)
    options = dict(shuffle=True, seed=3, augment="crop+flip+lighting", resize=12)

    def epoch_one(loader, start):
        loader.set_epoch(1)
        return list(loader.iterate(start))

    full = epoch_one(StreamingLoader(streamed.train_images, streamed.train_labels, 8, workers=2, **options), 0)
    resumed = epoch_one(StreamingLoader(streamed.train_images, streamed.train_labels, 8, workers=2, **options), 2)
    in_memory = epoch_one(BatchLoader(memory.train_images, memory.train_labels, 8, **options), 0)
    assert len(full) == 4 and len(resumed) == 2
    for (x, y), (rx, ry) in zip(full[2:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    for (x, y), (mx, my) in zip(full, in_memory):
        assert torch.equal(x, mx) and torch.equal(y, my)
    assert not torch.equal(full[0][0], epoch_one(  # the augmentation is really drawn: another seed differs
        StreamingLoader(streamed.train_images, streamed.train_labels, 8, workers=0, **{**options, "seed": 4}), 0)[0][0])


def recipe(folder, **changes):
    values = dict(model="lenet", epochs=2, batch_size=8, lr=0.05, momentum=0.9, augment="translate",
                  deterministic=True, device="cpu", data=f"imagefolder:{folder}", data_regime="stream")
    return make_config("d2l", **{**values, **changes})


def test_a_streamed_run_stopped_mid_epoch_and_resumed_ends_bit_identical(folder, tmp_path):
    """4 steps an epoch: stopped after step 2, resumed, and compared with an uninterrupted streamed run
    (weights, optimizer, schedule, RNG, metrics) and with the same run held in memory."""
    config = recipe(folder)
    run_fit(config, tmp_path / "whole")
    with pytest.raises(StopRequested) as stop:
        run_fit(config, tmp_path / "stopped", [StopAt(2)])
    assert (stop.value.payload["run_state"]["epoch"], stop.value.payload["run_state"]["batch"]) == (0, 2)
    run_fit(config, tmp_path / "stopped", resume=load_checkpoint(tmp_path / "stopped" / "checkpoint.pt"))
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")
    run_fit(recipe(folder, data_regime="memory"), tmp_path / "memory")
    assert_same_run(tmp_path / "whole", tmp_path / "memory")


def add_bad_headers(folder):
    """A 0-byte PNG and a text file named .png: files whose header does not read."""
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    return sorted(str(folder / n) for n in ("empty.png", "notes.png"))


def test_files_whose_header_does_not_read_are_listed_and_skipped_or_refused_with_strict(folder):
    bad = add_bad_headers(folder / "cross")
    data = load_source(f"imagefolder:{folder}", image_size=16, stream=True)
    assert data.notes[0].startswith("Skipped 2 unreadable image file(s)")
    assert all(data.notes[0].count(f"'{path}'") == 1 for path in bad)
    listed = {str(folder / name) for split in data.files for name in split.names}
    assert len(listed) == 36 and not listed & set(bad)
    with pytest.raises(UserError, match=r"2 image file\(s\) could not be read \(--strict\)"):
        load_source(f"imagefolder:{folder}", image_size=16, stream=True, strict=True)


def truncated_jpeg(path) -> None:
    """A JPEG of noise cut in the middle of its pixels: its header reads, its pixels do not decode."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_a_file_that_fails_to_decode_mid_run_is_replaced_by_the_next_image_and_named(folder):
    """Streamed: the run goes on with the next image of the split in its place, and a warning names the
    file; in memory the same image replaces it (a note lists it; --strict refuses it)."""
    bad = folder / "cross" / "cut.jpg"
    truncated_jpeg(bad)
    streamed, memory = load_image_folder(folder, 16, stream=True), load_image_folder(folder, 16)
    assert streamed.skipped == [] and [path for path, _ in memory.replaced] == [str(bad)]
    split = next(s for s in ("train", "val") if str(bad) in {str(folder / n) for n in getattr(streamed, s).names})
    files, images = getattr(streamed, split), getattr(memory, f"{split}_images")
    at = [str(folder / n) for n in files.names].index(str(bad))
    loader = StreamingLoader(files, torch.from_numpy(files.labels), len(files), shuffle=False, workers=1)
    with pytest.warns(RuntimeWarning, match="cut.jpg.* replaced by the next one that decodes"):
        ((x, y),) = list(loader)
    decoded = (x * 255).round().to(torch.uint8)
    assert torch.equal(decoded, images)  # streamed and in memory alike
    assert torch.equal(decoded[at], decoded[(at + 1) % len(files)]) and y[at] == y[(at + 1) % len(files)]
    with pytest.raises(UserError, match=r"1 image file\(s\) could not be read \(--strict\).*cut.jpg"):
        load_image_folder(folder, 16, strict=True)


def test_a_changed_folder_is_refused_on_resume(folder, tmp_path, capsys, offline_cli):
    """The fingerprint a checkpoint keeps is the manifest's (path, size, modification time, label per
    file): a file added, removed or touched is seen without reading any file. (The run's report, drawn
    from its streamed test images, is written.)"""
    out = tmp_path / "run"
    assert main(["train", "--data", f"imagefolder:{folder}", "--model", "lenet", "--epochs", "1", "--batch-size",
                 "8", "--data-regime", "stream", "--device", "cpu", "--out", str(out)]) == 0
    assert "Report not written" not in capsys.readouterr().out  # its test images streamed too
    assert "The test images could not be loaded" not in (out / "report.html").read_text()
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["data_fingerprint"] == splits_for(recipe(folder, epochs=1)).fingerprint  # unchanged: equal
    image = sorted((folder / "square").iterdir())[3]
    kept = os.stat(image)
    changes = {
        "added": (lambda: shutil.copy(image, folder / "circle" / "new.png"),
                  lambda: (folder / "circle" / "new.png").unlink()),
        "removed": (lambda: image.rename(image.with_name(".hidden")), lambda: image.with_name(".hidden").rename(image)),
        "touched": (lambda: os.utime(image, ns=(kept.st_atime_ns, kept.st_mtime_ns + 10**9)),
                    lambda: os.utime(image, ns=(kept.st_atime_ns, kept.st_mtime_ns))),
    }
    capsys.readouterr()
    for name, (change, undo) in changes.items():
        change()
        assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2, name
        assert "The data differ from those the run" in capsys.readouterr().err.strip().splitlines()[-1], name
        undo()
    assert splits_for(recipe(folder, epochs=1)).fingerprint == saved["data_fingerprint"]


def test_auto_streams_above_the_threshold_and_the_setting_forces_either_regime(folder, monkeypatch):
    config = recipe(folder, data_regime="auto")
    in_memory = splits_for(config)
    assert isinstance(in_memory.train_images, torch.Tensor)  # 36 images of 3x28x28: far below any budget
    monkeypatch.setenv(preflight.ENV_MEMORY_LIMIT, "0.01")  # 10 kB
    streamed = splits_for(config)
    assert isinstance(streamed.train_images, FileSplit) and "streamed" in streamed.source
    assert isinstance(splits_for(config.replace(data_regime="memory")).train_images, torch.Tensor)
    monkeypatch.delenv(preflight.ENV_MEMORY_LIMIT)
    assert isinstance(splits_for(config.replace(data_regime="stream")).train_images, FileSplit)
    # either way the same data: fingerprint, first images for a whitening layer, labels
    assert streamed.fingerprint == in_memory.fingerprint
    assert torch.equal(whitening_images(config, streamed), whitening_images(config, in_memory))
    assert torch.equal(streamed.train_labels, in_memory.train_labels)
    with pytest.raises(UserError, match="--data-regime stream .* needs --data imagefolder:DIR"):
        splits_for(make_config("d2l", data_regime="stream"))


def test_the_memory_budget_is_half_the_free_memory_shared_by_the_machines_processes(monkeypatch):
    monkeypatch.setattr(preflight, "available_bytes", lambda device: 2**30)  # 1 GiB free
    config = make_config("d2l", device="cpu")
    assert preflight.in_memory_budget(config, local_processes=2) == 2**28  # half of it, for 2 processes
    assert preflight.streams(config, 2**28 + 1, local_processes=2)
    assert not preflight.streams(config, 2**28, local_processes=2)
    monkeypatch.setenv(preflight.ENV_MEMORY_LIMIT, "100")  # the variable caps it
    assert preflight.in_memory_budget(config) == 100 * 2**20


def test_the_manifest_is_made_once_and_reused(folder, monkeypatch):
    read = []
    real = manifest.read_header
    monkeypatch.setattr(manifest, "read_header", lambda path: read.append(path) or real(path))
    first = load_image_folder(folder, 16, stream=True)
    assert len(read) == 36 and manifest.cache_file(folder).is_file()
    second = load_image_folder(folder, 16, stream=True)
    assert len(read) == 36  # no header read again: every file's stat matched the cache
    assert first.train.names == second.train.names and first.val.names == second.val.names
    (folder / "circle" / "extra.png").write_bytes((folder / "circle" / sorted(os.listdir(folder / "circle"))[0])
                                                  .read_bytes())
    load_image_folder(folder, 16, stream=True)
    assert read[36:] == [folder / "circle" / "extra.png"]  # only the new file's header


@pytest.mark.cuda
def test_on_a_cuda_gpu_streamed_batches_are_the_in_memory_ones(folder):
    """Pinned host batches copied without blocking, then augmented on the GPU: the same as the split held
    on the GPU (a check for machines with one; skipped elsewhere)."""
    streamed, memory = load_image_folder(folder, 16, stream=True), load_image_folder(folder, 16)
    options = dict(shuffle=True, seed=3, augment="crop+flip+lighting", resize=12, device="cuda")
    ours = StreamingLoader(streamed.train_images, streamed.train_labels, 8, workers=2, **options)
    reference = BatchLoader(memory.train_images, memory.train_labels, 8, **options)
    for (x, y), (rx, ry) in zip(ours, reference):
        assert x.device.type == "cuda" and torch.equal(x, rx) and torch.equal(y, ry)
