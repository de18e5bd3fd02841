"""Where Fashion-MNIST comes from: local folders, Debian's package, or the official mirror.

`load_fashion_mnist()` returns the four validated numpy arrays; nothing here touches torch.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_lab import files
from alexnet_lab.data.idx import read_idx
from alexnet_lab.errors import UserError

CLASS_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # the names d2l.get_fashion_mnist_labels uses, index = label
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# SHA-256 of the *decompressed* IDX payloads: mirrors and distributions recompress the
# .gz files (Debian's differ byte-wise from the official ones) but the content is fixed.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
OFFICIAL_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "ALEXNET_LAB_DATA"
ENV_MIRROR = "ALEXNET_LAB_MIRROR"  # e.g. a file:// URL of a local copy
ENV_OFFLINE = "ALEXNET_LAB_OFFLINE"  # "1": never download


@dataclass(frozen=True)
class FashionMNIST:
    """The dataset as uint8 images (N, 28, 28) and int64 labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # the folder the files came from

    def __iter__(self):  # allows `xtr, ytr, xte, yte = load_fashion_mnist()`
        return iter((self.train_images, self.train_labels, self.test_images, self.test_labels))


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alexnet-lab" / "fashion-mnist"


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _missing(folder: Path) -> list[str]:
    return [stem for stem in FILES.values() if _find_file(folder, stem) is None]


def _complete(folder: Path) -> bool:
    return not _missing(folder)


def candidate_dirs(root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The folders searched, in order, each with a name saying where it came from."""
    if root is not None:
        return [("--data-dir", Path(root))]
    dirs = []
    if os.environ.get(ENV_DIR):
        dirs.append((ENV_DIR, Path(os.environ[ENV_DIR])))
    dirs += [("user cache", user_cache_dir()), ("Debian dataset-fashion-mnist", DEBIAN_DIR)]
    return dirs


def locate(root: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Return a folder holding all four files, downloading into the first candidate if needed."""
    dirs = candidate_dirs(root)
    for _, folder in dirs:
        if _complete(folder):
            return folder
    searched = ", ".join(f"{label} ({folder})" for label, folder in dirs)
    if not download or os.environ.get(ENV_OFFLINE) == "1":
        partial = [(folder, missing) for _, folder in dirs if (missing := _missing(folder))
                   and len(missing) < len(FILES)]
        if partial:  # a folder with some of the files: say which ones are missing
            searched += "; " + "; ".join(f"{folder} lacks {', '.join(m + '(.gz)' for m in missing)}"
                                         for folder, missing in partial)
        raise UserError(
            f"Fashion-MNIST not found; searched {searched}. Fix: on Debian run "
            "'apt-get install dataset-fashion-mnist', or copy the four official .gz files into "
            f"one of those folders, or unset {ENV_OFFLINE} to download them."
        )
    target = dirs[0][1] if root is not None or os.environ.get(ENV_DIR) else user_cache_dir()
    download_fashion_mnist(target)
    return target


def _sha256_of_payload(path: Path) -> str:
    """SHA-256 of the file's content, decompressed first when it is gzip."""
    with open(path, "rb") as fh:
        is_gzip = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if is_gzip else open
    digest = hashlib.sha256()
    with opener(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_fashion_mnist(folder: Path, mirror: str | None = None) -> None:
    """Download the missing files into `folder`, verifying each one's checksum."""
    mirror = mirror or os.environ.get(ENV_MIRROR) or OFFICIAL_MIRROR
    if not mirror.endswith("/"):
        mirror += "/"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create data folder '{folder}': {exc.strerror}. Pass a writable --data-dir.") from None
    for stem in FILES.values():
        if _find_file(folder, stem) is None:
            _download_one(mirror + stem + ".gz", folder / (stem + ".gz"), SHA256[stem])


def _download_one(url: str, dest: Path, sha256: str) -> None:
    from tqdm import tqdm  # imported here: only downloads need it

    def check(tmp: Path) -> None:
        got = _payload_digest_or_reason(tmp)
        if got != sha256:
            raise UserError(
                f"Checksum mismatch for {url}: expected sha256 {sha256} of the content, got {got}. "
                "The partial file was removed; try again or use another mirror."
            )

    with files.atomic_writer(dest, verify=check) as out:
        try:
            response = urllib.request.urlopen(url, timeout=60)
        except (urllib.error.URLError, OSError) as exc:
            raise UserError(
                f"Download of {url} failed ({exc}). Fix: check the network, set {ENV_MIRROR} "
                "to another mirror, or install/copy the files (see --data-dir)."
            ) from None
        total = int(response.headers.get("Content-Length") or 0) or None
        if not sys.stderr.isatty():  # a log file: one plain line instead of a progress bar
            print(f"Downloading {url}" + (f" ({total / 1e6:.1f} MB)" if total else ""), file=sys.stderr,
                  flush=True)
        with response, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                _write(out, chunk, dest)
                bar.update(len(chunk))
        _write(out, b"", dest, flush=True)


def _write(out, chunk: bytes, dest: Path, flush: bool = False) -> None:
    """Write to the download's temp file; a failure (e.g. a full disk) is an error naming `dest`."""
    try:
        out.write(chunk)
        if flush:
            out.flush()
    except OSError as exc:
        raise UserError(f"Writing '{dest}' failed while downloading it: {exc.strerror or exc}. The partial "
                        "file was removed; free disk space, or point --data-dir (or ALEXNET_LAB_DATA) at a "
                        "folder on another disk.") from None


def _payload_digest_or_reason(path: Path) -> str:
    try:
        return _sha256_of_payload(path)
    except (OSError, EOFError) as exc:
        return f"an unreadable file ({exc})"


def _validate(images: np.ndarray, labels: np.ndarray, img_path: Path, lbl_path: Path) -> None:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise UserError(
            f"'{img_path}' holds {images.dtype} of shape {images.shape}, not N x 28 x 28 uint8 images. "
            "Check that the image and label files are not swapped."
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise UserError(f"'{lbl_path}' holds {labels.dtype} of shape {labels.shape}, not N uint8 labels.")
    if len(images) != len(labels):
        raise UserError(
            f"Image/label count mismatch: '{img_path}' has {len(images)} images but '{lbl_path}' has "
            f"{len(labels)} labels. Replace the files with a matching official pair."
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise UserError(
            f"'{lbl_path}' has label {int(labels.max())}, outside 0..{NUM_CLASSES - 1}. "
            "The file is corrupt; replace it with the official one."
        )


def load_fashion_mnist(root: str | os.PathLike | None = None, *, download: bool = True) -> FashionMNIST:
    """Load and validate Fashion-MNIST (train 60000x28x28, test 10000x28x28)."""
    folder = locate(root, download=download)
    arrays = {}
    for split in ("train", "test"):
        img_path = _find_file(folder, FILES[f"{split}_images"])
        lbl_path = _find_file(folder, FILES[f"{split}_labels"])
        images, labels = read_idx(img_path), read_idx(lbl_path)
        _validate(images, labels, img_path, lbl_path)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    return FashionMNIST(**arrays, source=str(folder))
