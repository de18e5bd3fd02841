"""Checkpoints: atomic saves that survive a full disk or a kill, loads that never run code."""

from __future__ import annotations

import errno
import os
import pickle
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.engine import checkpoint as ckpt
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.schema import check_checkpoint
from alexnet_lab.engine.trainer import fit
from alexnet_lab.errors import UserError
from alexnet_lab.models import build_model
from alexnet_lab.engine.run_dir import RunWriter
from runhelpers import last_line, recipe_args


def small_payload(value: float = 1.0) -> dict:
    return {"model_name": "lenet", "weights": torch.full((3,), value), "note": "x"}


def temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_holds_format_and_versions(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "c.pt", small_payload(2.0))
    payload = ckpt.load_checkpoint(path)
    assert payload["format"] == ckpt.FORMAT and torch.equal(payload["weights"], torch.full((3,), 2.0))
    assert payload["versions"] == {"alexnet_lab": "0.1.0", "torch": str(torch.__version__)}
    assert type(payload["versions"]["torch"]) is str  # a TorchVersion would not load with weights_only


def test_a_training_checkpoint_is_self_describing(tmp_path):
    data = fakedata.make_dataset(tmp_path / "data", n_train=64, n_test=32)
    config = make_config("d2l", model="lenet", epochs=1, batch_size=32, momentum=0.9, device="cpu",
                         data_dir=str(data))
    with fakedata.one_thread():
        fit(config, [RunWriter(tmp_path, config.to_dict())])
    payload = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert check_checkpoint(payload, tmp_path / "checkpoint.pt", for_resume=True) == config
    assert payload["config"] == config.to_dict() and payload["model_name"] == "lenet"
    assert set(payload["rng"]) >= {"python", "numpy", "torch"}
    assert payload["run_state"]["step"] == 2 and payload["run_state"]["epoch"] == 1
    assert [row["step"] for row in payload["run_state"]["metrics"]] == [1, 2]
    assert set(payload["optimizer_state"]["state"]) == set(range(10))  # a momentum buffer per tensor
    assert not (tmp_path / "best.pt").exists()  # tested once, at its last state: checkpoint.pt holds the best


def test_rng_state_round_trip(tmp_path):
    state = ckpt.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    torch.randn(5), np.random.randn(3), random.random()  # move every generator on
    ckpt.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])
    restored = ckpt.load_checkpoint(ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": state}))["rng"]
    ckpt.set_rng_state(restored)  # after a trip through disk and weights_only too
    assert random.random() == first[0]


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(tmp_path / "checkpoint.pt", small_payload(1.0))
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UserError, match=r"Saving checkpoint '.*checkpoint.pt' failed: No space left on device\. "
                                        r"Free disk space or choose another --out; the previous checkpoint is intact"):
        ckpt.save_checkpoint(path, small_payload(9.0))
    assert path.read_bytes() == before and temp_files(tmp_path) == []
    monkeypatch.undo()
    assert torch.equal(ckpt.load_checkpoint(path)["weights"], torch.full((3,), 1.0))


def test_kill_during_save_leaves_the_previous_file(tmp_path, monkeypatch):
    """A signal (here: KeyboardInterrupt) in the middle of writing: the temp file goes, the old file stays."""
    path = ckpt.save_checkpoint(tmp_path / "checkpoint.pt", small_payload(1.0))
    real_save = torch.save

    def interrupted_save(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, small_payload(5.0))
    monkeypatch.undo()
    assert torch.equal(ckpt.load_checkpoint(path)["weights"], torch.full((3,), 1.0))
    assert temp_files(tmp_path) == []


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="Saving checkpoint .* failed: Not a directory. .*no checkpoint was written"):
        ckpt.save_checkpoint(blocker / "checkpoint.pt", small_payload())


NO_END_RECORD = "it does not end with a zip archive's end record, so it is cut short"


def corrupt_files(tmp_path):
    good = ckpt.save_checkpoint(tmp_path / "good.pt", small_payload()).read_bytes()
    return {
        "empty": (b"", "is truncated or corrupt: it is empty. Nothing in it was loaded."),
        "truncated": (good[:len(good) // 2], f"is truncated or corrupt: {NO_END_RECORD}"),
        "random": (bytes(range(256)) * 4, f"is truncated or corrupt: {NO_END_RECORD}"),
        "text": (b"hello, not a checkpoint\n", f"is truncated or corrupt: {NO_END_RECORD}"),
    }


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "text"])
def test_corrupt_files_are_named_errors(tmp_path, kind):
    data, message = corrupt_files(tmp_path)[kind]
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(data)
    with pytest.raises(UserError) as err:
        ckpt.load_checkpoint(path)
    assert f"'{path}'" in str(err.value) and message in str(err.value)


def test_not_an_alexnet_lab_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="is not an alexnet-lab checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


class _CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))  # unpickling calls open(path, "w"): creates the file


class _RunsShell:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))  # unpickling runs a shell command


@pytest.mark.parametrize("code", [_CreatesFile, _RunsShell], ids=["open", "os.system"])
@pytest.mark.parametrize("container", ["torch.save", "legacy torch.save", "raw pickle"])
def test_code_in_a_checkpoint_never_runs(tmp_path, container, code):
    """Refused, nothing run, and the message says so, without torch's advice to retry unsafely; a pickle
    outside torch.save's zip archive is refused before torch reads it."""
    marker = tmp_path / "created-by-the-payload"
    path = tmp_path / "evil.pt"
    payload = {"format": ckpt.FORMAT, "model_state": code(marker)}
    if container == "raw pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=container == "torch.save")
    with pytest.raises(UserError) as err:
        ckpt.load_checkpoint(path)
    message = str(err.value)
    if container == "torch.save":
        assert message.startswith(f"Refused to load '{path}': the file contains Python code"), message
        assert "Nothing in it was run. Do not load it with weights_only=False" in message
        assert "corrupt" not in message
    else:
        assert message.startswith(f"Checkpoint '{path}' is truncated or corrupt: {NO_END_RECORD}"), message
    assert "will likely succeed" not in message and "add_safe_globals" not in message
    assert not marker.exists()
    with open(path, "rb") as fh:  # guard: the payload is real
        pickle.load(fh) if container == "raw pickle" else torch.load(fh, weights_only=False)
    assert marker.exists()


def test_a_resume_refuses_a_checkpoint_without_a_part_it_restores_or_with_weights_of_another_model():
    good = {"model_name": "lenet", "model_state": build_model("lenet").state_dict(),
            "config": make_config("d2l", model="lenet").to_dict()}
    check_checkpoint(good, "c.pt")  # enough for the commands that only run the model
    with pytest.raises(UserError, match="'c.pt' is damaged .*: the checkpoint lacks optimizer_state, scheduler_state"):
        check_checkpoint(good, "c.pt", for_resume=True)
    other = {**good, "model_name": "alexnet"}
    with pytest.raises(UserError, match=r"'c.pt' does not match model 'alexnet' \(missing 6.weight"):
        check_checkpoint(other, "c.pt")
    reshaped = {**good, "model_state": {**good["model_state"], "0.weight": torch.zeros(6, 1, 3, 3)}}
    with pytest.raises(UserError, match=r"0.weight has shape \(6, 1, 3, 3\), the model needs \(6, 1, 5, 5\)"):
        check_checkpoint(reshaped, "c.pt")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), cut=st.integers(0, 5000))
def test_random_and_cut_files_only_raise_user_error(tmp_path, data, cut):
    """Random bytes, and a real checkpoint cut or spliced at random: a UserError or a valid load."""
    good = ckpt.save_checkpoint(tmp_path / "good.pt", small_payload()).read_bytes()
    for blob in (data, good[:cut], good[:cut] + data + good[cut + len(data):]):
        path = tmp_path / "fuzz.pt"
        path.write_bytes(blob)
        try:
            payload = ckpt.load_checkpoint(path)
        except UserError as exc:
            assert str(path) in str(exc)
        else:
            assert payload["format"] == ckpt.FORMAT


# --- through the commands -----------------------------------------------------------------------------

@pytest.mark.usefixtures("offline_cli")  # curves as empty files: the full disk counts the files written
def test_full_disk_while_saving(data_dir_512, tmp_path, monkeypatch, capsys):
    """The epoch-2 save meets a full disk inside torch.save (which reports it as a RuntimeError from
    its zip writer): the documented message, exit 2, epoch 1's checkpoint intact, no temp file."""
    monkeypatch.setattr(os, "fdopen", fakedata.FullDisk(files_ok=5))  # metrics.jsonl/.csv, config.json, epoch 1: checkpoint.pt, best.pt
    out = tmp_path / "r"
    assert main(recipe_args(data_dir_512, out)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"alexnet-lab train: error: Saving checkpoint '{out / 'checkpoint.pt'}' failed: "
                                    "No space left on device. Free disk space or choose another --out; the "
                                    "previous checkpoint is intact."), err
    assert "Traceback" not in err
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.pt")["run_state"]["step"] == 16
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.usefixtures("offline_cli")
def test_malicious_checkpoint_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # unpickling this creates `marker`

    evil = tmp_path / "checkpoint.pt"
    torch.save({"format": "alexnet-lab-checkpoint/1", "model_state": Payload()}, evil)
    for argv in (["evaluate", "--checkpoint", str(evil)], ["predict", "--checkpoint", str(evil), str(evil)],
                 ["train", "--resume", str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        if argv[0] != "predict":  # predict reads the images first (this one is not an image)
            assert f"Refused to load '{evil}': the file contains Python code" in err
        assert not marker.exists()
    # Guard: the file really carries code; an unsafe load would have run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.usefixtures("offline_cli")
def test_checkpoint_of_another_model(lenet_checkpoint, tmp_path, capsys):
    from alexnet_lab.engine.checkpoint import save_checkpoint

    payload = load_checkpoint(lenet_checkpoint)
    payload["model_name"] = "alexnet"
    wrong = save_checkpoint(tmp_path / "wrong.pt", payload)
    assert main(["evaluate", "--checkpoint", str(wrong), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"Checkpoint '{wrong}' does not match model 'alexnet' (missing 6.weight" in err


@pytest.mark.usefixtures("offline_cli")
def test_evaluate_on_a_folder_says_it_is_a_folder(data_dir, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--data-dir", str(data_dir)]) == 2
    assert last_line(capsys) == (f"alexnet-lab evaluate: error: Checkpoint '{tmp_path}' is a folder, not a file. "
                                 f"Pass the checkpoint file itself, e.g. '{tmp_path / 'checkpoint.pt'}' or "
                                 f"'{tmp_path / 'best.pt'}'.")
