"""Generated image folders that look like real ones: shapes drawn with Pillow in random colours, sizes,
positions and rotations, over noisy or gradient backgrounds, saved in mixed sizes, modes and formats.

Used by the tests and by the README's "Your own images" example:
    python tests/imagedata.py OUT_DIR [--per-class N] [--seed S] [--train-val]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
# (extension, Pillow mode) pairs, cycled: PNG RGB / JPEG RGB / grayscale PNG / palette GIF / RGBA PNG / BMP / WebP
FORMATS = ((".png", "RGB"), (".jpg", "RGB"), (".png", "L"), (".gif", "P"), (".png", "RGBA"),
           (".bmp", "RGB"), (".webp", "RGB"))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
                   for k in range(4)]
    elif shape == "triangle":
        corners = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif shape == "star":
        corners = [((1 if k % 2 == 0 else 0.45) * math.cos(angle + k * math.pi / 5),
                    (1 if k % 2 == 0 else 0.45) * math.sin(angle + k * math.pi / 5)) for k in range(10)]
    else:  # cross: a plus sign of two bars
        w = 0.3
        base = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        c, s = math.cos(angle), math.sin(angle)
        corners = [(x * c - y * s, x * s + y * c) for x, y in base]
    return [(cx + r * x, cy + r * y) for x, y in corners]


def render(shape: str, rng: np.random.Generator):
    """One RGB image of `shape`, of a random size and aspect ratio (between 40 and 160 pixels a side)."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = (int(v) for v in rng.integers(40, 161, size=2))
    background = rng.integers(0, 256, size=3)
    tint = rng.integers(0, 256, size=3)
    ramp = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    pixels = background * (1 - ramp) + tint * ramp + rng.normal(0, 12, size=(h, w, 3))
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    side = min(w, h)
    r = side * rng.uniform(0.22, 0.4)
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * side, h / 2 + rng.uniform(-0.15, 0.15) * side
    colour = tuple(int(v) for v in (255 - background + rng.integers(-60, 61, size=3)).clip(0, 255))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r * 0.3)))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=colour)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


def save(img, path: Path, mode: str) -> Path:
    if mode == "P":
        img = img.convert("P", palette=1, colors=64)  # Image.Palette.ADAPTIVE
    elif mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(230)
    else:
        img = img.convert(mode)
    img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path)
    return path


def make_shapes(root: str | Path, per_class: int = 20, seed: int = 0, train_val: bool = False,
                classes=CLASSES, val_per_class: int | None = None) -> Path:
    """Write `per_class` images of each class to root/<class>/ (or root/train|val/<class>/ with
    `train_val`, val getting `val_per_class`, default a quarter), formats and modes cycling."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    splits = [("train", per_class), ("val", val_per_class or max(1, per_class // 4))] if train_val else [("", per_class)]
    counter = 0
    for split, n in splits:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ext, mode = FORMATS[counter % len(FORMATS)]
                counter += 1
                save(render(name, rng), folder / f"{name}_{i:04d}{ext}", mode)
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-val", action="store_true", help="write train/ and val/ folders")
    args = parser.parse_args()
    make_shapes(args.out, args.per_class, args.seed, args.train_val)
    print(f"wrote {args.out}: {len(CLASSES)} classes x {args.per_class} images")
