"""The one checkpoint format: atomic saves, and loads that never run code from the file.

A checkpoint is a plain dict of tensors and Python primitives, loaded with weights_only=True.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch

import alexnet_lab
from alexnet_lab import files
from alexnet_lab.engine.archives import CHECKPOINT_NAMES, read_archive
from alexnet_lab.errors import UserError, printable

FORMAT = "alexnet-lab-checkpoint/1"


def versions() -> dict:
    # str(): torch.__version__ is a TorchVersion, which weights_only=True refuses to load.
    return {"alexnet_lab": str(alexnet_lab.__version__), "torch": str(torch.__version__)}


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
        # A run saved on a machine with more GPUs resumes here: restore the GPUs this machine has.
        for index, gpu_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, index)


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write `payload` atomically: temp file in the same folder, fsync, rename.

    A kill at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    payload = {"format": FORMAT, "versions": versions(), **payload}
    existed = path.is_file()
    try:
        with files.atomic_writer(path) as fh:
            torch.save(payload, fh)
    except files.WriteError as exc:
        if exc.cause is None:  # refused (a symlink, a folder): the message says why
            raise
        cause = exc.cause
    except RuntimeError as exc:
        # torch.save reports a failed write of its zip container as a RuntimeError ("[enforce fail at
        # inline_container.cc...]") whose __context__ is the OSError (ENOSPC, EFBIG, EIO, ...).
        cause = _cause(exc)
        if cause is exc:
            raise
        if not isinstance(cause, OSError):
            raise cause from None  # a second Ctrl-C while torch was writing
    else:
        return path
    intact = "; the previous checkpoint is intact" if existed else "; no checkpoint was written"
    raise UserError(f"Saving checkpoint '{path}' failed: {cause.strerror or cause}. "
                    f"{files.advice(cause, '--out')}{intact}.") from None


# What best.pt keeps of a checkpoint: what predicting and evaluating read (the weights the run tested
# with, the model and its classes, the recipe, the data and how the run tested), not the optimizer,
# schedule, scaler, Lookahead or RNG states that only a resume reads (train --resume reads checkpoint.pt).
FOR_PREDICTING = ("model_name", "model_kwargs", "class_names", "config", "data_fingerprint", "evaluated_with")


def evaluated_state(payload: dict) -> dict:
    """The weights the run's test evaluations used: the EMA of the weights when it kept one."""
    ema = payload.get("ema_state")
    return ema["module"] if ema is not None else payload["model_state"]


def for_predicting(payload: dict) -> dict:
    """The part of a checkpoint payload that best.pt holds: FOR_PREDICTING, the evaluated weights as its
    model_state (about half a momentum run's checkpoint), and the step, examples and test accuracy of
    the state (its run_state's metrics: the row of its test)."""
    state = payload["run_state"]
    tested = [row for row in state["metrics"] if row.get("test_acc") is not None]
    return {**{key: payload[key] for key in FOR_PREDICTING if key in payload}, "model_state": evaluated_state(payload),
            "run_state": {"step": state["step"], "examples": state["examples"],
                          "best_test_acc": state["best_test_acc"], "metrics": tested[-1:]}}


def _cause(exc: BaseException) -> BaseException:
    """The OSError (or a signal's KeyboardInterrupt-like exception) that `exc` was raised while
    handling, if any; else `exc` itself."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) or not isinstance(seen, Exception):
            return seen
        seen = seen.__context__
    return exc


# torch's weights_only refusal opens with advice to retry with weights_only=False ("will likely
# succeed"), which for a file carrying code is exactly what must not be done: never quoted.
_TORCH_ADVICE = ("Weights only load failed", "weights_only", "Please file an issue", "Check the documentation")


def _unpickler_reason(exc: pickle.UnpicklingError) -> tuple[str, bool]:
    """(the line of torch's long weights_only message that says what was refused, whether the
    file references Python code: a GLOBAL the safe loader does not allow)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line.upper() and not line.startswith(_TORCH_ADVICE):
            # the fact only: torch goes on to suggest allow-listing the global, which must not be done
            return line.split("WeightsUnpickler error:")[-1].strip().split(". ")[0].rstrip("."), True
    for marker in ("Unsupported operand", "WeightsUnpickler error:"):
        for line in lines:
            if marker in line:
                line = line.split("WeightsUnpickler error:")[-1].strip() or line
                return line.split(". ")[0], False
    facts = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    return (facts[0].split(". ")[0] if facts else type(exc).__name__), False


LOAD_ADVICE = "Use best.pt or an earlier copy, or retrain."


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    advice: str = LOAD_ADVICE) -> dict:
    """Load a checkpoint safely (weights_only=True). Anything else is a UserError naming the file;
    `advice` says what to do about a damaged one."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"Checkpoint '{path}' is a folder, not a file. Pass the checkpoint file itself, "
                        f"e.g. '{path / 'checkpoint.pt'}' or '{path / 'best.pt'}'.")
    if not path.exists():
        if path.name == "best.pt" and (path.parent / "checkpoint.pt").is_file():
            raise UserError(f"'{path}' does not exist: the run's best test accuracy is that of its last state, "
                            f"whose weights are in '{path.parent / 'checkpoint.pt'}' (a run writes best.pt only "
                            "for a best before its end). Pass that file.")
        raise UserError(f"Checkpoint '{path}' does not exist. Pass the checkpoint.pt of a training run.")

    def refuse(problem: str) -> UserError:
        return UserError(f"Checkpoint '{printable(str(path))}' is truncated or corrupt: {problem}. Nothing in it "
                         f"was loaded. {advice}")

    try:  # read once, checked as a structure (engine/archives.py); torch loads exactly the checked bytes
        stream = read_archive(path, refuse, CHECKPOINT_NAMES).stream()
    except OSError as exc:
        raise UserError(f"Cannot read checkpoint '{printable(str(path))}': {exc.strerror or exc}. {advice}") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(stream, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason, carries_code = _unpickler_reason(exc)
        if carries_code:
            raise UserError(
                f"Refused to load '{path}': the file contains Python code or references to it ({reason}), "
                "which a checkpoint never needs. Nothing in it was run. Do not load it with "
                "weights_only=False or any other unsafe loader: that would run the code. Only load "
                "checkpoints written by alexnet-lab.") from None
        raise UserError(f"Checkpoint '{path}' is corrupt or not a PyTorch checkpoint (the safe loader "
                        f"stopped at: {reason}); nothing in it was run. {advice}") from None
    except Exception as exc:  # noqa: BLE001 - the safe loader raises KeyError, IndexError, ... on garbage
        detail = str(exc).split(". ")[0].splitlines()[0] if str(exc) else "the file ends too early"
        if not isinstance(exc, RuntimeError) and str(exc):
            detail = f"{type(exc).__name__}: {detail}"  # e.g. "KeyError: 101" from the unpickler
        raise UserError(f"Checkpoint '{path}' is truncated or corrupt ({detail}). {advice}") from None
    finally:
        del stream  # the file's bytes: the payload's tensors are copies, so peak memory is twice the file at most
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"'{path}' is not an alexnet-lab checkpoint (no '{FORMAT}' format tag).")
    return payload


def model_kwargs(payload: dict) -> dict:
    """The keyword arguments the checkpoint's model was built with (older checkpoints: none, i.e. the
    Fashion-MNIST defaults: 1 channel, 10 classes)."""
    kwargs = payload.get("model_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(v, int) for v in kwargs.values()):
        raise UserError("The checkpoint's model_kwargs are not a dict of whole numbers; it was not written "
                        "by alexnet-lab.")
    return {"in_channels": 1, "num_classes": 10, **kwargs}


def class_names(payload: dict) -> tuple[str, ...]:
    """The class names stored with the model (Fashion-MNIST's for checkpoints that predate them)."""
    from alexnet_lab.data import CLASS_NAMES

    return tuple(payload.get("class_names") or CLASS_NAMES)


def check_same_data(payload: dict, fingerprint: dict, run_dir: str | os.PathLike, *, allow: bool = False) -> bool:
    """True if the data a run resumes on are those its checkpoint was trained on (or the checkpoint
    predates fingerprints). Otherwise a UserError saying what differs, unless `allow` (then False)."""
    from alexnet_lab.data.fingerprint import describe_difference

    saved = payload.get("data_fingerprint")
    if saved is None:
        return True
    difference = describe_difference(saved, fingerprint)
    if difference is None:
        return True
    if allow:
        return False
    raise UserError(f"The data differ from those the run in '{run_dir}' was trained on ({difference}). A resumed "
                    "run must see the same images to continue the same run; --data-dir may only point at "
                    "another copy of the same files. Point --data-dir at the original data, or pass "
                    "--allow-data-change to continue on these anyway.")
