"""Image files -> uint8 arrays: any size/mode to (C, S, S) for image folders and `predict`, or to
Fashion-MNIST-like 28x28 grayscale; damaged, unreadable or oversized files are refused with a UserError.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from pathlib import Path

import numpy as np

from alexnet_lab.errors import UserError

MAX_PIXELS = 40_000_000  # decompression-bomb limit: refuse images larger than this (≈ 6300 x 6300)
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La")


@contextlib.contextmanager
def open_image(path: str | Path):
    """`PIL.Image.open` with the decompression-bomb limit, every failure a UserError naming the file.

    Only a regular file is read: a FIFO named `x.png` would block the read forever, a device never
    end. Decoding is lazy in Pillow, so the body of the `with` decodes too, and any exception there
    is the file's fault: Pillow's decoders raise many kinds on damaged data (struct.error, IndexError,
    TypeError, ZeroDivisionError, MemoryError, ... found by fuzzing DDS and AVIF files), all mapped to
    a UserError. KeyboardInterrupt and other BaseExceptions pass.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    with _open_regular_file(path) as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                old_limit = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = MAX_PIXELS
                try:
                    with Image.open(fh) as img:
                        yield img
                finally:
                    Image.MAX_IMAGE_PIXELS = old_limit
        except UserError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(f"Image '{path}' is too large (over {MAX_PIXELS:,} pixels; refused as a possible "
                            "decompression bomb). Downscale it first.") from None
        except UnidentifiedImageError:
            raise UserError(f"'{path}' is not an image PIL can read (empty, or not an image format). "
                            "Pass PNG, JPEG, BMP, GIF or similar files.") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise UserError(f"Image '{path}' is damaged or unreadable ({exc}).") from None
        except Exception as exc:  # a decoder's own failure on damaged data
            kind = type(exc).__name__
            if type(exc).__module__ != "builtins":  # e.g. struct.error
                kind = f"{type(exc).__module__}.{kind}"
            raise UserError(f"Image '{path}' is damaged or unreadable ({kind} in the decoder: {exc}).") from None


def _open_regular_file(path: Path):
    """`path` opened for reading if it is a regular file (checked on the open file, so it cannot be
    swapped in between); the open itself never blocks (O_NONBLOCK: a FIFO without a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"Image '{path}' does not exist.") from None
    except OSError as exc:  # permission, a socket (ENXIO), a name too long, ...
        raise UserError(f"Image '{path}' cannot be opened ({exc.strerror}).") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise UserError(f"Image '{path}' cannot be read ({exc.strerror}).") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise UserError(f"'{path}' is a folder, not an image file.")
        kind = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "not a file")
        raise UserError(f"'{path}' is {kind}, not a regular file, so it is not read as an image. "
                        "Remove it or replace it with the image file.")
    return os.fdopen(fd, "rb")


def read_header(path: str | Path) -> tuple[int, int, bool]:
    """(width, height, whether single-channel) as the file's header says, decoding nothing: a damaged
    header, a file that is no image or over MAX_PIXELS is a UserError, as for decoding."""
    with open_image(path) as img:
        return img.size[0], img.size[1], img.mode in GRAY_MODES


def load_image(path: str | Path, size: int, channels: int) -> np.ndarray:
    """Any size/mode -> (channels, size, size) uint8: the shorter side scaled to `size` and the centre
    cropped to a square (the 2012 paper's preprocessing), antialiased bilinear resampling; EXIF
    orientation applied; transparency composited onto white; 1 channel = luminance (ITU-R 601-2)."""
    return decode_image(path, size, channels)[0]


def decode_image(path: str | Path, size: int, channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """`load_image`'s pixels and the file's own (width, height), as stored (before EXIF orientation)."""
    from PIL import Image, ImageOps

    with open_image(path) as img:
        original = img.size
        mode = "RGB" if channels == 3 else "L"
        img.draft(mode, (size, size))  # JPEG: decode at a reduced scale
        # No copy where nothing changes (an upright image, its mode, its size): a streamed run decodes
        # every image of every epoch, and each copy of a 256x256 RGB image costs about a tenth of it.
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode == "F" or img.mode.startswith("I"):  # 16/32-bit and float: scaled, not clipped
            img = to_gray_8bit(img)
        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        if img.mode != mode:
            img = img.convert(mode)
        if img.size != (size, size):
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8)
    return pixels.reshape(size, size, channels).transpose(2, 0, 1).copy(), original  # (C, S, S)


def load_image_28(path: str | Path, invert: str = "auto") -> np.ndarray:
    """Any size/mode -> (28, 28) uint8 grayscale, light object on dark background like the dataset.

    invert: "auto" inverts when the border is brighter than the centre (dark-on-light photos).
    """
    from PIL import Image

    with open_image(path) as img:
        img = to_gray_8bit(img)
        img = img.resize((28, 28), Image.Resampling.BILINEAR, reducing_gap=3.0)
        pixels = np.asarray(img, dtype=np.uint8).copy()
    if invert == "yes" or (invert == "auto" and _border_brighter(pixels)):
        pixels = 255 - pixels
    return pixels


def full_scale(mode: str, pixels: np.ndarray) -> float:
    """The value that means white in a PIL mode beyond 8 bits: 1.0 for float images ("F", the [0, 1]
    convention of ToTensor; one whose values exceed 1 is taken as [0, 255]), 65535 for 16-bit
    ("I;16*", and "I" holding values above 255, as 16-bit PNGs may open), else 255."""
    top = float(pixels.max()) if pixels.size else 0.0
    if mode == "F":
        return 1.0 if top <= 1.0 else 255.0
    if mode.startswith("I;16") or (mode == "I" and top > 255):
        return 65535.0 if top <= 65535 else float(2**32 - 1)
    return 255.0


def to_gray_8bit(img):
    """Any PIL image -> mode "L", scaling float and 16/32-bit images by their mode's real range
    (PIL's own convert("L") clips them: a [0, 1] float image turns black, a 16-bit one saturates)."""
    from PIL import Image

    if img.mode == "F" or img.mode.startswith("I"):
        pixels = np.asarray(img, dtype=np.float64)
        scaled = np.clip(np.rint(pixels * (255.0 / full_scale(img.mode, pixels))), 0, 255)
        return Image.fromarray(scaled.astype(np.uint8), mode="L")
    return img.convert("L")


def _border_brighter(pixels: np.ndarray) -> bool:
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return float(border.mean()) > float(pixels[7:21, 7:21].mean())
