"""Decoding image files (data/images.py): float and 16-bit images scale like 8-bit ones; damaged and
non-regular files are a UserError naming the file (a skipped bad file in an image folder), never a
crash and never a hang.

Valid images are written with Pillow in many formats, then damaged deterministically (seeded byte
flips, cuts, inserts, extreme header values) and decoded with the real Pillow.
"""

from __future__ import annotations

import errno
import io
import os
import random
import struct
import threading

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from alexnet_lab import UserError
from alexnet_lab.cli import main
from alexnet_lab.data.imagefolder import load_image_folder
from alexnet_lab.data.images import load_image, load_image_28, read_header
from imagedata import make_shapes

# (format, extension, mode, save options): DDS and AVIF are the ones whose damaged files crashed.
FORMATS = [
    ("DDS", "dds", "RGBA", {}), ("DDS", "dds", "RGB", {}), ("DDS", "dds", "L", {}),
    ("DDS", "dds", "RGBA", {"pixel_format": "DXT1"}), ("DDS", "dds", "RGBA", {"pixel_format": "DXT5"}),
    ("DDS", "dds", "RGB", {"pixel_format": "BC5"}),
    ("AVIF", "avif", "RGB", {}), ("AVIF", "avif", "RGBA", {}),
    ("PNG", "png", "RGB", {}), ("PNG", "png", "LA", {}), ("JPEG", "jpg", "RGB", {}), ("GIF", "gif", "P", {}),
    ("TIFF", "tif", "RGB", {}), ("WEBP", "webp", "RGB", {}), ("BMP", "bmp", "RGB", {}), ("TGA", "tga", "RGB", {}),
    ("ICO", "ico", "RGBA", {}), ("SGI", "sgi", "RGB", {}),
]
MUTATIONS = {"DDS": 100, "AVIF": 100}  # per format (30 for the others); each decoded 3 ways: ~2500 decodes, ~5 s


def encoded(fmt: str, mode: str, options: dict) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def damaged(data: bytes, rng: random.Random) -> bytes:
    """One seeded mutation, weighted towards the header, where the decoders read sizes and formats."""
    b = bytearray(data)
    head = min(len(b), 160)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(head)] = rng.randrange(256)
    elif kind == 1:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 2:
        b = b[:rng.randrange(1, len(b))]
    elif kind == 3:
        at = rng.randrange(head - 4)
        b[at:at + 4] = bytes(rng.choice([0, 1, 0x7F, 0x80, 0xFF]) for _ in range(4))
    else:
        at = rng.randrange(len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(b)


@pytest.mark.parametrize("fmt,ext,mode,options", FORMATS,
                         ids=[f"{f}-{m}{'-' + o['pixel_format'] if o else ''}" for f, _, m, o in FORMATS])
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF/TIFF tags
def test_a_damaged_image_decodes_to_the_right_shape_or_is_a_user_error(tmp_path, fmt, ext, mode, options):
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    data = encoded(fmt, mode, options)
    rng = random.Random(f"{fmt}-{mode}-{options}")
    decoder_failures = 0
    for i in range(MUTATIONS.get(fmt, 30)):
        path = tmp_path / f"damaged{i}.{ext}"
        path.write_bytes(damaged(data, rng))
        for load, shape in ((lambda: load_image(path, 16, 3), (3, 16, 16)),
                            (lambda: load_image(path, 16, 1), (1, 16, 16)),
                            (lambda: load_image_28(path), (28, 28))):
            try:
                pixels = load()
            except UserError as exc:
                assert f"'{path}'" in str(exc)
                decoder_failures += "in the decoder" in str(exc)
                continue
            assert pixels.shape == shape and pixels.dtype == np.uint8
    if fmt in ("DDS", "AVIF") and not options:  # the mutations do reach the failures that used to crash
        assert decoder_failures > 0


@pytest.mark.parametrize("error", [struct.error("unpack requires a buffer of 4 bytes"), IndexError("index 9"),
                                   TypeError("bad operand"), ZeroDivisionError("division by zero"),
                                   NotImplementedError("Unknown pixel format flags 0"), MemoryError(),
                                   RuntimeError("Failed to decode frame 0"), KeyError("mode")])
def test_any_exception_from_a_decoder_is_a_user_error_naming_the_file(tmp_path, monkeypatch, error):
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path)

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)  # where Pillow decodes a file's pixels
    name = "struct.error" if isinstance(error, struct.error) else type(error).__name__
    for load in (lambda: load_image(path, 16, 3), lambda: load_image_28(path)):
        with pytest.raises(UserError, match=rf"Image '{path}' is damaged or unreadable \({name} in the decoder"):
            load()


def test_ctrl_c_while_decoding_is_not_a_bad_file(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path)

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageFile.ImageFile, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_image(path, 16, 3)


# --- images beyond 8 bits ----------------------------------------------------------------------------

def test_predict_scales_float_and_16_bit_images(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(56, 56)).astype(np.uint8)
    gray[:, :8] = 0  # a dark border so "auto" never inverts
    Image.fromarray(gray).save(tmp_path / "8bit.png")
    Image.fromarray(gray.astype(np.float32) / 255.0).save(tmp_path / "float.tiff")  # mode F, 0..1
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16bit.png")  # mode I;16, 0..65535
    assert Image.open(tmp_path / "float.tiff").mode == "F" and Image.open(tmp_path / "16bit.png").mode == "I;16"
    reference = load_image_28(tmp_path / "8bit.png").astype(int)
    assert reference.std() > 10
    for name in ("float.tiff", "16bit.png"):
        got = load_image_28(tmp_path / name).astype(int)
        assert np.abs(got - reference).max() <= 1, name


# --- files that are not regular files -------------------------------------------------------------------

def returns_within(fn, fifo, seconds=10.0):
    """fn() in a thread; if it blocks (on the FIFO), a writer is opened to release it and the test fails."""
    outcome = {}

    def call():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader gets end-of-file
        except OSError as exc:
            assert exc.errno == errno.ENXIO
        thread.join(seconds)
        pytest.fail(f"{fn} blocked on the FIFO {fifo}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.parametrize("load", [lambda p: load_image(p, 16, 3), load_image_28, read_header])
def test_a_fifo_named_like_an_image_is_refused_at_once(tmp_path, load):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=rf"'{fifo}' is a FIFO \(named pipe\), not a regular file"):
        returns_within(lambda: load(fifo), fifo)


def test_a_device_or_a_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="is a character device, not a regular file"):
        load_image(os.devnull, 16, 3)
    with pytest.raises(UserError, match="is a folder, not an image file"):
        load_image(tmp_path, 16, 3)
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "none.png", 16, 3)


# --- in an image folder and in predict ------------------------------------------------------------------

@pytest.fixture
def folder_with_bad_files(tmp_path, monkeypatch):
    """Two classes of 6 good images, plus in one class a damaged DDS, a damaged AVIF and a FIFO."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_shapes(tmp_path / "shapes", per_class=6, classes=("circle", "square"))
    dds = bytearray(encoded("DDS", "RGBA", {}))
    dds[80:84] = b"\0\0\0\0"  # the pixel format flags: "Unknown pixel format flags 0" (NotImplementedError)
    (root / "circle" / "broken.dds").write_bytes(bytes(dds))
    bad = [root / "circle" / "broken.dds"]
    if features.check("avif"):
        avif = encoded("AVIF", "RGB", {})  # its last byte zeroed: "Decoding of color planes failed" (RuntimeError)
        (root / "circle" / "broken.avif").write_bytes(avif[:-1] + b"\0")
        bad.append(root / "circle" / "broken.avif")
    os.mkfifo(root / "square" / "pipe.png")
    bad.append(root / "square" / "pipe.png")
    return root, [str(p) for p in bad]


def test_an_image_folder_skips_damaged_files_and_fifos_and_strict_refuses_them(folder_with_bad_files):
    root, bad = folder_with_bad_files
    data = load_image_folder(root, 16)
    # skipped when the header does not read; replaced by the next image when only the pixels do not decode
    assert sorted(path for path, _ in data.skipped + data.replaced) == sorted(bad)
    assert len(data.train_labels) + len(data.val_labels) == 12 + len(data.replaced)
    with pytest.raises(UserError, match=rf"{len(bad)} image file\(s\) could not be read \(--strict\)"):
        load_image_folder(root, 16, channels=3, strict=True)


def test_a_run_on_an_image_folder_with_bad_files_trains_and_lists_them(folder_with_bad_files, tmp_path, capsys,
                                                                        one_thread):
    root, bad = folder_with_bad_files
    out = tmp_path / "run"
    assert main(["train", "--data", f"imagefolder:{root}", "--model", "lenet", "--epochs", "1", "--batch-size", "4",
                 "--device", "cpu", "--no-report", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "unreadable image file(s)" in err
    assert all(err.count(f"'{path}'") == 1 for path in bad)  # skipped or replaced, each listed once
    assert (out / "checkpoint.pt").is_file()

    fifo = root / "square" / "pipe.png"
    argv = ["predict", "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu"]
    assert returns_within(lambda: main([*argv, str(fifo)]), fifo) == 2
    assert f"'{fifo}' is a FIFO (named pipe), not a regular file" in capsys.readouterr().err
    assert main([*argv, bad[0]]) == 2
    assert f"Image '{bad[0]}' is damaged or unreadable (NotImplementedError" in capsys.readouterr().err


@pytest.mark.usefixtures("offline_cli")
def test_predict_refuses_bad_images(lenet_checkpoint, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb)  # 64 M pixels in a few kB: a decompression bomb
    good = tmp_path / "good.png"
    Image.new("L", (40, 30), 200).save(good)
    cut = tmp_path / "cut.png"
    Image.new("L", (300, 300)).save(cut)
    cut.write_bytes(cut.read_bytes()[:60])
    for path, message in [(text, "is not an image PIL can read"),
                          (bomb, "is too large (over 40,000,000 pixels; refused as a possible decompression bomb)"),
                          (cut, "is damaged or unreadable")]:
        assert main(["predict", "--checkpoint", str(lenet_checkpoint), "--device", "cpu", str(good), str(path)]) == 2
        err = capsys.readouterr().err
        assert f"'{path}'" in err and message in err and "Traceback" not in err
    assert main(["predict", "--checkpoint", str(lenet_checkpoint), "--device", "cpu", str(good)]) == 0
    assert str(good) in capsys.readouterr().out
