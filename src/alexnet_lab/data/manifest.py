"""An image folder's manifest: every image file's relative path, class, size, modification time and
header (width, height, gray or not, or why it cannot be read), made in one pass without decoding.

Cached per folder in the user cache and reused for each file whose size, modification time, change
time and inode are unchanged: a later run, and every later process of a torchrun job on the same
machine, stats the files and reads no header again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_lab import files
from alexnet_lab.data.images import read_header
from alexnet_lab.errors import UserError

MANIFEST_FORMAT = "alexnet-lab-manifest/1"
VAL_FOLDERS = ("val", "validation", "valid", "test")


@dataclass
class Manifest:
    """The image files of a folder in scan order (class by class, sorted paths), one row each."""
    root: Path
    class_names: tuple[str, ...]
    has_layout: bool       # DIR/train/<class>/... and DIR/val/<class>/...
    paths: np.ndarray      # (N,) bytes: each file's path relative to root, POSIX, os.fsencode'd
    labels: np.ndarray     # (N,) int64: the index of its class folder
    in_val: np.ndarray     # (N,) bool: under the validation folder
    stamps: np.ndarray     # (N, 4) int64: size in bytes, mtime, ctime (ns), inode; -1 where stat failed
    dims: np.ndarray       # (N, 2) int64: (width, height) as stored; 0 where unreadable
    gray: np.ndarray       # (N,) bool: a single-channel mode
    errors: dict[int, str]  # row -> why the file cannot be read (its header)

    @property
    def good(self) -> np.ndarray:
        good = np.ones(len(self.paths), dtype=bool)
        good[list(self.errors)] = False
        return good

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.paths[i])


def image_extensions() -> set[str]:
    from PIL import Image

    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def _class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _image_files(folder: Path, extensions: set[str]) -> list[Path]:
    """Image files under `folder` (any depth), sorted; hidden files and other extensions ignored."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in extensions]
    return sorted(found)


def scan(root: Path) -> tuple[list[tuple[Path, int, bool]], tuple[str, ...], bool]:
    """(files as (path, label, in_val), class names, whether DIR has the train/val layout)."""
    if not root.is_dir():
        raise UserError(f"Image folder '{root}' does not exist or is not a folder. Pass "
                        "--data imagefolder:DIR with DIR/<class>/<images> or DIR/train/<class>/... "
                        "and DIR/val/<class>/...")
    extensions = image_extensions()
    val_dir = next((root / v for v in VAL_FOLDERS if (root / v).is_dir()), None)
    layout = (root / "train").is_dir() and val_dir is not None
    train_root = root / "train" if layout else root
    classes = _class_folders(train_root)
    if not classes:
        raise UserError(f"'{train_root}' has no class folders. Put each class's images in its own "
                        "sub-folder: DIR/<class>/<image>.")
    names = tuple(c.name for c in classes)
    found = []
    for label, folder in enumerate(classes):
        images = _image_files(folder, extensions)
        if not images:
            raise UserError(f"Class folder '{folder}' holds no image files ({', '.join(sorted(extensions)[:6])}, "
                            "...). Add images or remove the folder.")
        found += [(p, label, False) for p in images]
    if layout:
        unknown = [c.name for c in _class_folders(val_dir) if c.name not in names]
        if unknown:
            raise UserError(f"'{val_dir}' has class folders that '{train_root}' lacks: {', '.join(unknown)}. "
                            "Training and validation need the same classes.")
        for label, name in enumerate(names):
            if (val_dir / name).is_dir():
                found += [(p, label, True) for p in _image_files(val_dir / name, extensions)]
    if len(names) < 2:
        raise UserError(f"'{train_root}' has only one class folder ('{names[0]}'); a classifier needs at "
                        "least two. Put each class's images in its own sub-folder.")
    return found, names, layout


def _stamp(path: Path) -> tuple[int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode): what a cached header is reused under. The change time moves
    on any write, even one that sets the modification time back, so an edited file is read again."""
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1, -1)  # its header read reports why
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alexnet-lab" / "imagefolder"


def cache_file(root: Path) -> Path:
    """Where the manifest of `root` (by its absolute path) is cached."""
    key = hashlib.sha256(os.fsencode(str(root.resolve()))).hexdigest()[:24]
    return cache_dir() / f"manifest-{key}.npz"


def read_manifest(root: Path) -> Manifest:
    """Scan `root`, stat every image file and read the headers of those the cache does not hold as
    they are now; the cache is rewritten when any header was read."""
    from tqdm import tqdm

    found, names, has_layout = scan(root)
    paths = np.array([os.fsencode(p.relative_to(root).as_posix()) for p, _, _ in found], dtype=bytes)
    stamps = np.array([_stamp(p) for p, _, _ in found], dtype=np.int64).reshape(-1, 4)
    dims, gray, errors = np.zeros((len(found), 2), dtype=np.int64), np.zeros(len(found), dtype=bool), {}
    cached = _read_cache(cache_file(root))
    fresh = []
    for i, key in enumerate(paths.tolist()):
        hit = cached.get(key)
        if hit is not None and hit[0] == tuple(stamps[i].tolist()):
            _, dims[i], gray[i], error = hit
            if error:
                errors[i] = error
        else:
            fresh.append(i)
    for i in tqdm(fresh, unit="file", desc="reading image headers", disable=len(fresh) < 2000 or None,
                  leave=False):
        try:
            width, height, gray[i] = read_header(found[i][0])
            dims[i] = (width, height)
        except UserError as exc:
            errors[i] = str(exc)
    manifest = Manifest(root, names, has_layout, paths, np.array([f[1] for f in found], dtype=np.int64),
                        np.array([f[2] for f in found], dtype=bool), stamps, dims, gray, errors)
    if fresh:
        _write_cache(manifest)
    return manifest


def _read_cache(path: Path) -> dict:
    """{relative path: (stamp, (width, height), gray, error or "")} from the cache; {} when it is
    missing, torn or of another format (then every header is read again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != MANIFEST_FORMAT:
                return {}
            paths, stamps, dims, gray = z["paths"], z["stamps"], z["dims"], z["gray"]
            error_at, error_text = z["error_at"], z["error_text"].tolist()
    except (OSError, ValueError, KeyError, EOFError):
        return {}
    errors = dict(zip(error_at.tolist(), error_text))
    if not len(paths) == len(stamps) == len(dims) == len(gray):
        return {}
    return {key: (tuple(stamp), dim, g, errors.get(i, ""))
            for i, (key, stamp, dim, g) in enumerate(zip(paths.tolist(), stamps.tolist(), dims, gray.tolist()))}


def _write_cache(manifest: Manifest) -> None:
    """Write the manifest's cache atomically. A cache that cannot be written (a read-only home) costs
    only the header pass of the next run, so the failure is not an error."""
    path = cache_file(manifest.root)
    at = sorted(manifest.errors)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_writer(path) as fh:
            np.savez(fh, format=np.array(MANIFEST_FORMAT), paths=manifest.paths, stamps=manifest.stamps,
                     dims=manifest.dims, gray=manifest.gray, error_at=np.array(at, dtype=np.int64),
                     error_text=np.array([manifest.errors[i] for i in at], dtype=str))
    except (OSError, UserError):  # files.WriteError, or a target refused (a symlink)
        pass
