"""The one checkpoint format: atomic saves, and loads that never run code from the file.

A checkpoint is a plain dict of tensors and Python primitives, loaded with weights_only=True.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

import alexnet_lab
from alexnet_lab.errors import UserError

FORMAT = "alexnet-lab-checkpoint/1"


def versions() -> dict:
    # str(): torch.__version__ is a TorchVersion, which weights_only loading rejects.
    return {"alexnet_lab": alexnet_lab.__version__, "torch": str(torch.__version__)}


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_s = state["numpy"]
    np.random.set_state(("MT19937", np_s["key"].numpy().astype(np.uint32), np_s["pos"],
                         np_s["has_gauss"], np_s["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write `payload` atomically: temp file in the same folder, fsync, rename.

    A kill at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    payload = {"format": FORMAT, "versions": versions(), **payload}
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"Cannot write checkpoint in '{path.parent}': {exc.strerror}. "
                        "Choose a writable --out folder.") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise UserError(f"Saving checkpoint '{path}' failed: {exc.strerror or exc}. "
                        "Free disk space or choose another --out; the previous checkpoint is intact.") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (weights_only=True). Anything else is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint '{path}' does not exist. Pass the checkpoint.pt of a training run.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"Refused to load '{path}': it needs more than tensors and plain values to load "
            f"(it could run code), so nothing in it was executed. Only load checkpoints written by "
            f"alexnet-lab. ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"Checkpoint '{path}' is truncated or corrupt ({str(exc).splitlines()[0]}). "
                        "Use best.pt or an earlier copy, or retrain.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"'{path}' is not an alexnet-lab checkpoint (no '{FORMAT}' format tag).")
    return payload
