"""Image folders as a data source: layout, split, channels, bad files, the manifest's cache, and a short
training run on generated images that learns well above chance."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from alexnet_lab import UserError
from alexnet_lab.cli import main
from alexnet_lab.data.imagefolder import load_image_folder, pixels, split_indices
from alexnet_lab.data.sources import load_source
from imagedata import make_shapes

THREE = ("circle", "cross", "square")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test gets its own user cache (the manifests' cache lives there)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def add_bad_files(folder):
    """A 0-byte PNG, a truncated JPEG and a text file named .png: three kinds of unreadable image."""
    (folder / "empty.png").write_bytes(b"")
    good = sorted(folder.glob("*.jpg"))[0].read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.png").write_text("not an image")
    return sorted(str(folder / n) for n in ("cut.jpg", "empty.png", "notes.png"))


def test_training_on_a_generated_folder_learns_and_keeps_class_names(tmp_path, capsys, one_thread):
    root = make_shapes(tmp_path / "shapes", per_class=120, train_val=True, classes=THREE, val_per_class=30)
    bad = add_bad_files(root / "train" / "cross")
    (root / "train" / "square" / "nested" / "deeper").mkdir(parents=True)  # images at any depth count
    make_shapes(tmp_path / "extra", per_class=2, classes=("square",))
    for i, f in enumerate(sorted((tmp_path / "extra" / "square").iterdir())):
        f.rename(root / "train" / "square" / "nested" / "deeper" / f"x{i}{f.suffix}")
    out = tmp_path / "run"
    argv = ["train", "--data", f"imagefolder:{root}", "--model", "lenet-modern", "--epochs", "30",
            "--batch-size", "32", "--lr", "0.1", "--momentum", "0.9", "--schedule", "onecycle",
            "--label-smoothing", "0.1", "--init", "default", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    # Skipped when the header does not read; replaced by another image when only the pixels do not decode
    skipped = int(re.search(r"Skipped (\d+) unreadable image file\(s\)", err)[1])
    replaced = int(re.search(r"Replaced (\d+) image file\(s\) that failed to decode", err)[1]) if skipped < 3 else 0
    assert skipped + replaced == 3
    assert all(err.count(f"'{path}'") == 1 for path in bad)  # each bad file listed once, by path
    assert f"{362 + replaced} train / 90 val images (train/val folders), 3x28x28" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] > 0.55  # chance is 1/3
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["class_names"] == list(THREE)
    assert payload["model_kwargs"] == {"in_channels": 3, "num_classes": 3}

    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert f"test acc {summary['test_acc']:.4f}" in text
    assert all(name in text for name in THREE)
    image = sorted((root / "val" / "square").iterdir())[0]
    assert main(["predict", "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu", str(image)]) == 0
    guesses = capsys.readouterr().out.split(": ", 1)[1]
    assert sorted(g.rsplit(" ", 1)[0] for g in guesses.strip().split(", ")) == sorted(THREE)


def test_strict_refuses_bad_files(tmp_path):
    root = make_shapes(tmp_path / "s", per_class=4, classes=THREE[:2])
    add_bad_files(root / "circle")
    with pytest.raises(UserError, match=r"3 image file\(s\) could not be read \(--strict\)"):
        load_image_folder(root, 16, strict=True)
    data = load_image_folder(root, 16)
    assert len(data.skipped) == 3 and len(data.train_labels) + len(data.val_labels) == 8


@pytest.mark.parametrize("setup, message", [
    (lambda r: None, "does not exist or is not a folder"),
    (lambda r: r.mkdir(), "has no class folders"),
    (lambda r: make_shapes(r, per_class=3, classes=("circle",)), r"has only one class folder \('circle'\)"),
    (lambda r: (make_shapes(r, per_class=3, classes=THREE[:2]), (r / "zebra").mkdir(),
                (r / "zebra" / "readme.txt").write_text("x")), "Class folder '.*zebra' holds no image files"),
    (lambda r: (make_shapes(r, per_class=3, classes=THREE[:2]),
                [p.write_bytes(b"") for p in (r / "circle").iterdir()]),
     "'circle'.* have no readable training image"),
    (lambda r: (make_shapes(r, per_class=3, train_val=True, classes=THREE[:2]),
                make_shapes(r / "val", per_class=1, classes=("zebra",))), "class folders that .* lacks: zebra"),
])
def test_clear_errors_for_unusable_folders(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(UserError, match=message):
        load_image_folder(root, 16)


def test_stratified_split_is_seeded_disjoint_and_keeps_every_class():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    good = np.ones(len(labels), dtype=bool)
    good[3] = False  # an unreadable file takes part in neither split
    train, val = split_indices(labels, good, None, 0.2, seed=7)
    again = split_indices(labels, good, None, 0.2, seed=7)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not set(train) & set(val) and set(train) | set(val) == set(np.flatnonzero(good))
    assert sorted(np.bincount(labels[val], minlength=4).tolist()) == [0, 1, 1, 2]  # round(0.2 n), >= 1 if n >= 2
    assert set(labels[train]) == {0, 1, 2, 3}
    other = split_indices(labels, good, None, 0.2, seed=8)
    assert not np.array_equal(val, other[1])


def test_channels_default_to_gray_only_when_every_image_is_gray(tmp_path):
    from PIL import Image

    root = tmp_path / "g"
    for name, value in (("dark", 30), ("light", 220)):
        (root / name).mkdir(parents=True)
        for i, size in enumerate([(20, 30), (50, 40), (16, 16)]):
            Image.new("L", size, value + i).save(root / name / f"{i}.png")
    assert load_source(f"imagefolder:{root}", image_size=12).train_images.shape[1:] == (1, 12, 12)
    Image.new("RGB", (10, 10), (200, 10, 10)).save(root / "light" / "colour.jpg")
    data = load_source(f"imagefolder:{root}", image_size=12)
    assert data.train_images.shape[1:] == (3, 12, 12) and data.class_names == ("dark", "light")
    assert load_source(f"imagefolder:{root}", image_size=12, channels=1).train_images.shape[1] == 1


def test_decoding_matches_pillow_reference(tmp_path):
    """Shorter side to S, centre square: checked against Pillow's resize of the centre box."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)  # wide: crop columns 10..40
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "x.png")
    data = load_image_folder(tmp_path, 20, val_fraction=0.5)
    reference = Image.fromarray(pixels).resize((20, 20), Image.Resampling.BILINEAR, box=(10, 0, 40, 30))
    assert np.array_equal(data.train_images[0], np.asarray(reference).transpose(2, 0, 1))


def test_resume_on_an_image_folder_continues_the_same_run(tmp_path, one_thread):
    """A resumed run re-reads the folder into the same split and the same augmented batches."""
    root = make_shapes(tmp_path / "s", per_class=10, classes=THREE)
    common = ["--data", f"imagefolder:{root}", "--model", "speednet", "--batch-size", "8", "--lr", "0.05",
              "--momentum", "0.9", "--augment", "--deterministic", "--device", "cpu"]
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--resume", str(tmp_path / "a"), "--epochs", "2"]) == 0
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True) for r in ("a", "b"))
    assert a["class_names"] == b["class_names"] == list(THREE)
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key


def rewrite_in_place(path):
    """New pixels in the same BMP (uncompressed: same dimensions, same byte size), its modification
    time set back: what make, rsync --size-only or a stat-keyed cache take for an unchanged file."""
    import os

    from PIL import Image

    before = os.stat(path)
    with Image.open(path) as img:
        size, mode = img.size, img.mode
    Image.new(mode, size, (255, 0, 255)).save(path, format="BMP")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_file_rewritten_in_place_with_size_and_mtime_kept_has_its_header_read_again(tmp_path, monkeypatch):
    """The manifest's cache keys each header on size, modification time, change time and inode: an
    edit that sets the modification time back still moves the change time."""
    from alexnet_lab.data import manifest

    root = make_shapes(tmp_path / "s", per_class=6, classes=THREE)
    load_image_folder(root, 24)
    read = []
    real = manifest.read_header
    monkeypatch.setattr(manifest, "read_header", lambda path: read.append(path) or real(path))
    load_image_folder(root, 24)
    assert read == []  # every header from the cache
    bmp = sorted(root.rglob("*.bmp"))[0]
    rewrite_in_place(bmp)
    data = load_image_folder(root, 24)
    assert read == [bmp]  # that file's header alone is read again, and its new pixels decoded
    magenta = np.array([255, 0, 255], dtype=np.uint8)[:, None, None]
    images = np.concatenate([data.train_images, data.val_images])
    assert sum(bool((image == magenta).all()) for image in images) == 1


def test_a_file_that_is_not_regular_is_skipped_without_blocking(tmp_path):
    """A FIFO named like an image is never read (its header read opens it non-blocking and refuses
    it): it is listed as skipped."""
    import os

    root = make_shapes(tmp_path / "s", per_class=3, classes=THREE[:2])
    os.mkfifo(root / "circle" / "x.png")
    data = load_image_folder(root, 16)
    assert [(path, "FIFO" in reason) for path, reason in data.skipped] == [(str(root / "circle" / "x.png"), True)]
    assert len(data.train) + len(data.val) == 6


def test_one_data_path_for_both_sources(tiny_data):
    """Fashion-MNIST through the same source: gray (N, 28, 28), or the gray channel repeated for --channels 3."""
    gray = load_source("fashion-mnist", data_dir=str(tiny_data))
    rgb = load_source("fashion-mnist", data_dir=str(tiny_data), channels=3)
    assert gray.train_images.shape == (64, 28, 28) and rgb.train_images.shape == (64, 3, 28, 28)
    assert all(torch.equal(rgb.test_images[:, c], gray.test_images) for c in range(3))
    assert gray.class_names[0] == "t-shirt" and len(gray.class_names) == 10
    with pytest.raises(UserError, match="--data must be 'fashion-mnist' or 'imagefolder:DIR'"):
        load_source("imagefolder:")


# --- what a run tells about its images: upscaling, the validation files ----------------------------

def write_images(root, sizes_by_class: dict, seed: int = 0):
    """Random-pixel RGB PNGs of the given (width, height) sizes in root/<class>/NN.png."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, sizes in sizes_by_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, (width, height) in enumerate(sizes):
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("stream", [False, True], ids=["in memory", "streamed"])
def test_images_upscaled_more_than_twice_are_counted_in_a_note(tmp_path, stream):
    # shorter sides 8 and 13 are upscaled more than 2x to 28, 14 exactly 2x (not counted), 6 the smallest, 30
    sizes = [(8, 8), (20, 13), (14, 14), (6, 10), (40, 30)]
    root = write_images(tmp_path / "small", {"a": sizes, "b": sizes})
    note = ("Note: 6 of 10 images have a side shorter than 14 px (the smallest 6x10) and are upscaled more "
            "than 2x to 28x28: the model sees them blurred")
    for _ in range(2):  # headers read, then from the manifest's cache
        notes = load_source(f"imagefolder:{root}", image_size=28, stream=stream).notes
        assert len(notes) == 1 and notes[0].startswith(note), notes
    assert load_source(f"imagefolder:{root}", image_size=12, stream=stream).notes == []  # 6 x 2 = 12: no more than 2x


def test_the_validation_files_are_listed_in_the_order_of_the_validation_images(tmp_path):
    from alexnet_lab.data.images import load_image

    root = make_shapes(tmp_path / "s", per_class=6, classes=THREE)
    for stream in (False, True):
        data = load_image_folder(root, 20, val_fraction=0.34, seed=3, stream=stream)
        assert len(data.val_files) == len(data.val_labels) == 6 and len(set(data.val_files)) == 6
        for name, label, image in zip(data.val_files, data.val_labels, pixels(data.val_images, slice(None))):
            assert name.split("/")[0] == THREE[label]  # relative to the folder: <class>/<file>
            assert np.array_equal(load_image(root / name, 20, data.channels), image)  # that file's pixels
    folders = make_shapes(tmp_path / "tv", per_class=4, classes=THREE, train_val=True)
    listed = load_image_folder(folders, 20).val_files
    assert sorted(listed) == sorted(p.relative_to(folders).as_posix() for p in (folders / "val").rglob("*.*"))


def test_a_run_notes_upscaling_lists_its_validation_files_and_evaluate_predicts_each(tmp_path, capsys, one_thread):
    """`train` prints the notice, writes val_files.txt; `evaluate --predictions` gives one row per listed file."""
    import csv

    root = write_images(tmp_path / "tiny", {"dark": [(8, 8)] * 8, "light": [(8, 8)] * 8})
    out = tmp_path / "run"
    assert main(["train", "--data", f"imagefolder:{root}", "--model", "lenet", "--epochs", "1", "--batch-size", "4",
                 "--val-fraction", "0.25", "--augment", "translate", "--device", "cpu", "--no-report",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("Note: 16 of 16 images have a side shorter than 14 px (the smallest 8x8) and are upscaled more than "
            "2x to 28x28") in err
    listed = (out / "val_files.txt").read_text().splitlines()
    assert sorted(listed) == sorted(load_image_folder(root, 28, val_fraction=0.25, seed=0).val_files)
    assert len(listed) == 4 and all((root / name).is_file() for name in listed)
    assert sorted(name.split("/")[0] for name in listed) == ["dark", "dark", "light", "light"]

    predictions = tmp_path / "predictions.csv"
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu",
                 "--predictions", str(predictions)]) == 0
    correct = int(capsys.readouterr().out.split("(", 1)[1].split("/", 1)[0])
    with predictions.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["path"] for row in rows] == listed  # the held-out files, in the same order
    assert all(row["true"] == row["path"].split("/")[0] for row in rows)
    assert all(row["predicted"] in ("dark", "light") and 0.5 <= float(row["confidence"]) <= 1 for row in rows)
    assert sum(row["true"] == row["predicted"] for row in rows) == correct
