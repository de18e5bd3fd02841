"""Image files -> Fashion-MNIST-like 28x28 uint8 arrays (for `predict`), refusing bad files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from alexnet_lab.errors import UserError

MAX_PIXELS = 40_000_000  # decompression-bomb limit: refuse images larger than this (≈ 6300 x 6300)


def load_image_28(path: str | Path, invert: str = "auto") -> np.ndarray:
    """Any size/mode -> (28, 28) uint8 grayscale, light object on dark background like the dataset.

    invert: "auto" inverts when the border is brighter than the centre (dark-on-light photos).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            try:
                with Image.open(path) as img:
                    img = to_gray_8bit(img)
                    img = img.resize((28, 28), Image.Resampling.BILINEAR, reducing_gap=3.0)
                    pixels = np.asarray(img, dtype=np.uint8).copy()
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
    except FileNotFoundError:
        raise UserError(f"Image '{path}' does not exist.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"Image '{path}' is too large (over {MAX_PIXELS:,} pixels; refused as a possible "
                        "decompression bomb). Downscale it first.") from None
    except UnidentifiedImageError:
        raise UserError(f"'{path}' is not an image PIL can read. Pass PNG, JPEG, BMP, GIF or similar files.") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"Image '{path}' is damaged or unreadable ({exc}).") from None
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
