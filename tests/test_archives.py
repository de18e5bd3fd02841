"""The one reader of zip files from outside (engine/archives.py): checkpoints and .pt2 models are read once,
checked as the structure torch's writer lays out, and torch loads exactly the checked bytes. A name stored
twice, a compressed entry (a zip bomb), hidden or appended bytes, a wrong declared size, a foreign name: each
is refused before torch reads a byte, and a harmless change (entry order, an unused entry) loads the same
weights. The archives are a tiny LeNet's."""

from __future__ import annotations

import io
import json
import os
import random
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zipdata
from alexnet_lab.cli import main
from alexnet_lab.engine import archives
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.export import ModelFile, export_model
from alexnet_lab.engine.inference import load_trained, metadata
from alexnet_lab.errors import UserError

BOMB_SIZE = 256 * 2**20  # bytes a bomb's entry declares (and would inflate to): 256 MiB of zeros in ~260 kB


class Files(dict):
    def __repr__(self) -> str:  # hypothesis shows a failing example's arguments: not their megabytes
        return "Files(checkpoint, pt2, image, entries)"


@pytest.fixture(scope="module")
def files(lenet_checkpoint, tmp_path_factory) -> dict:
    """A trained LeNet's checkpoint and its .pt2 export, a test image, each archive's entries."""
    folder = tmp_path_factory.mktemp("archives")
    model, config, payload = load_trained(lenet_checkpoint, torch.device("cpu"))
    pt2 = export_model(model, metadata(config, payload), "pt2", folder / "model.pt2")
    from PIL import Image

    Image.new("L", (28, 28), 128).save(folder / "image.png")
    return Files(checkpoint=lenet_checkpoint, pt2=pt2, image=folder / "image.png",
                 entries={"checkpoint": zipdata.members(lenet_checkpoint), "pt2": zipdata.members(pt2)})


@pytest.fixture(scope="module")
def bomb() -> tuple[bytes, int, int]:
    return zipdata.deflated_zeros(BOMB_SIZE)


@pytest.fixture
def torch_reads(monkeypatch) -> list:
    """Every call of torch.load and torch.export.load, recorded (and passed on)."""
    calls, load, export_load = [], torch.load, torch.export.load

    def spy(real):
        def read(f, *args, **kwargs):
            calls.append(f)
            return real(f, *args, **kwargs)
        return read

    monkeypatch.setattr(torch, "load", spy(load))
    monkeypatch.setattr(torch.export, "load", spy(export_load))
    return calls


def open_model(kind: str, path: Path):
    """What alexnet-lab makes of the file: a checkpoint's weights, or the .pt2's logits for a fixed input."""
    if kind == "checkpoint":
        return load_checkpoint(path)["model_state"]
    return ModelFile(path)(torch.linspace(0, 1, 784).reshape(1, 1, 28, 28))


def assert_same(kind: str, got, expected) -> None:
    if kind == "checkpoint":
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    else:
        assert torch.equal(got, expected)


def test_the_test_writer_writes_exactly_what_torch_writes(files):
    """So that each forged file below differs from torch's own in the one thing the test changes."""
    for kind in ("checkpoint", "pt2"):
        assert zipdata.zip_bytes(files["entries"][kind]) == files[kind].read_bytes(), kind


def test_torch_loads_the_checked_bytes_not_the_path(files, torch_reads):
    open_model("checkpoint", files["checkpoint"])
    open_model("pt2", files["pt2"])
    assert len(torch_reads) >= 2 and all(isinstance(f, io.BytesIO) for f in torch_reads), torch_reads


# --- a name stored twice ---------------------------------------------------------------------------------

def forged_program(entries, marker: Path, padding: int) -> list[tuple[str, bytes]]:
    """`padding` small entries first, then the genuine entries with models/model.json stored twice: first a
    copy whose shape expressions run `touch marker` when evaluated, then the genuine copy."""
    top = entries[0][0].split("/")[0]
    forged = [(f"{top}/pad{i}", b"x" * 16) for i in range(padding)]
    for name, data in entries:
        if name.endswith("/models/model.json"):
            text = json.dumps(json.loads(data))
            evil = f"__import__('os').system('touch {marker}') or s31"
            forged.append((name, text.replace("Symbol('s31', positive=True, integer=True)", evil).encode()))
            assert evil in forged[-1][1].decode()
        forged.append((name, data))
    return forged


def test_a_pt2_with_its_program_stored_twice_is_refused_and_runs_nothing(files, tmp_path, torch_reads, capsys):
    marker = tmp_path / "MARKER"
    evil = zipdata.write_zip(tmp_path / "evil.pt2", forged_program(files["entries"]["pt2"], marker, 8))
    with pytest.raises(UserError) as err:
        ModelFile(evil)
    top = files["entries"]["pt2"][0][0].split("/")[0]
    assert f"'{evil}' is not a model file as alexnet-lab export writes it: it holds two entries named " \
           f"'{top}/models/model.json'" in str(err.value)
    assert main(["predict", "--model-file", str(evil), str(files["image"])]) == 2
    assert "it holds two entries named" in capsys.readouterr().err
    assert torch_reads == [] and not marker.exists()


def test_the_forged_program_really_runs_code_when_torch_reads_it_unchecked(files, tmp_path):
    """Guard: torch's own reader takes the first copy for some of these layouts, and evaluates it."""
    markers = []
    for padding in range(12):
        markers.append(tmp_path / f"MARKER{padding}")
        path = zipdata.write_zip(tmp_path / "evil.pt2", forged_program(files["entries"]["pt2"], markers[-1], padding))
        try:
            torch.export.load(path)
        except Exception:  # noqa: BLE001 - only whether the code ran matters here
            pass
        with pytest.raises(UserError, match="it holds two entries named"):
            ModelFile(path)
    assert any(marker.exists() for marker in markers)


# --- zip bombs ----------------------------------------------------------------------------------------------

def peak_growth(action) -> int:
    """Bytes by which the process's resident memory peaked above its size before `action()` (Linux: the
    peak, VmHWM, is reset by writing 5 to /proc/self/clear_refs)."""
    def status(key: str) -> int:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key))
        return int(line.split()[1]) * 1024

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak memory of this process ({exc})")
    before = status("VmRSS")
    action()
    return status("VmHWM") - before


def largest_weight(entries, kind: str) -> str:
    prefix = "/data/" if kind == "checkpoint" else "/data/weights/weight_"
    return max((name for name, _ in entries if prefix in name and name.split("/")[-1][-1].isdigit()),
               key=lambda name: len(dict(entries)[name]))


@pytest.mark.parametrize("kind", ["checkpoint", "pt2"])
def test_a_zip_bomb_is_refused_before_anything_is_inflated(files, tmp_path, bomb, torch_reads, kind):
    entries = files["entries"][kind]
    path = zipdata.write_zip(tmp_path / f"bomb.{kind}", entries, compressed={largest_weight(entries, kind): bomb})
    assert path.stat().st_size < 2**20 and bomb[1] == BOMB_SIZE
    errors = []

    def load():
        with pytest.raises(UserError) as err:
            open_model(kind, path)
        errors.append(str(err.value))

    assert peak_growth(load) < 32 * 2**20  # inflating would take 256 MiB
    assert "is compressed; torch.save and torch.export never compress an entry, and alexnet-lab refuses " \
           "compressed entries rather than inflate them" in errors[0]
    assert f"'{path}'" in errors[0] and torch_reads == []


def test_a_compressed_archive_inside_a_pt2_is_refused(files, tmp_path, torch_reads):
    """A .pt2's sample inputs are a torch.save archive of their own, read by torch.load: checked the same way."""
    def bomb_inside(data: bytes) -> bytes:
        inner = zipdata.members(data)
        return zipdata.zip_bytes(inner, compressed={inner[0][0]: zipdata.deflated(inner[0][1])})

    path = zipdata.rewrite_member(files["pt2"], tmp_path / "m.pt2", "data/sample_inputs/model.pt", bomb_inside)
    with pytest.raises(UserError, match="is not a torch.export model as alexnet-lab export writes it: its entry "
                                        "'archive/data.pkl' is compressed"):
        ModelFile(path)
    assert torch_reads == []


# --- what is not a regular file, or too large ---------------------------------------------------------------

def test_a_fifo_or_an_oversized_file_is_refused_unread(files, tmp_path, monkeypatch, torch_reads):
    fifo = tmp_path / "checkpoint.pt"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(UserError, match=f"Checkpoint '{fifo}' is truncated or corrupt: it is not a regular file"):
        load_checkpoint(fifo)
    assert time.monotonic() - start < 5  # it did not wait for a writer
    monkeypatch.setattr(archives, "MAX_BYTES", 1000)
    for kind in ("checkpoint", "pt2"):
        with pytest.raises(UserError, match=r"bytes, more than the 1,000 alexnet-lab reads"):
            open_model(kind, files[kind])
    assert torch_reads == []


# --- a fuzz of the structure -------------------------------------------------------------------------------

FOREIGN = ["evil.py", "code/__torch__/m.py", "constants.pkl", "data/weights/model.pt", "data.pkl/x", "extra/x.json",
           "models/other.json", "data/0x", ".data/serialization_id/x"]
HARMLESS = {"reorder", "unused entry"}
MUTATIONS = ["reorder", "unused entry", "repeated name", "repeated name in other case", "foreign name",
             "renamed", "other top folder", "compressed", "hidden bytes", "inflated size", "local name differs",
             "prepended", "appended", "truncated"]


def mutate(kind: str, entries: list, mutation: str, index: int, blob: bytes) -> bytes:
    """The archive `entries` with one change; `index` and `blob` choose where and what."""
    entries, options = list(entries), {}
    name, data = entries[index % len(entries)]
    top, rest = name.split("/", 1)
    if mutation == "reorder":
        random.Random(index).shuffle(entries)
    elif mutation == "unused entry":  # a name of the layout that nothing refers to
        entries.insert(index % (len(entries) + 1), (f"{top}/data/{'999' if kind == 'checkpoint' else 'weights/weight_999'}",
                                                    blob))
    elif mutation.startswith("repeated name"):
        copy = name if mutation == "repeated name" else f"{top}/{rest.upper()}"
        entries.insert(index % (len(entries) + 1), (copy, blob))
    elif mutation == "foreign name":
        entries.insert(index % (len(entries) + 1), (f"{top}/{FOREIGN[index % len(FOREIGN)]}", blob))
    elif mutation in ("renamed", "other top folder"):
        entries[index % len(entries)] = (f"{top}/x{rest}" if mutation == "renamed" else f"other/{rest}", data)
    elif mutation == "compressed":
        options["compressed"] = {name: zipdata.deflated(data)}
    elif mutation == "hidden bytes":
        options["hidden"] = {name: blob}
    elif mutation == "inflated size":
        options["declared"] = {name: len(blob)}
    elif mutation == "local name differs":
        options["local_names"] = {name: name[:-1] + ("0" if name[-1] != "0" else "1")}
    archive = zipdata.zip_bytes(entries, **options)
    if mutation == "prepended":
        return blob + archive
    if mutation == "appended":
        return archive + blob
    if mutation == "truncated":
        return archive[:len(archive) - 1 - index % 200]
    return archive


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("kind", ["checkpoint", "pt2"])
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 10**6), blob=st.binary(min_size=1, max_size=64))
def test_a_changed_archive_is_refused_before_torch_reads_it_or_loads_the_same_weights(files, tmp_path, torch_reads,
                                                                                       kind, mutation, index, blob):
    path = tmp_path / f"fuzzed.{kind}"
    data = mutate(kind, files["entries"][kind], mutation, index, blob)
    path.write_bytes(data)
    torch_reads.clear()
    if mutation in HARMLESS:
        assert_same(kind, open_model(kind, path), open_model(kind, files[kind]))
        return
    with pytest.raises(UserError) as err:
        open_model(kind, path)
    assert torch_reads == [], (mutation, str(err.value))
    message = str(err.value)
    if kind == "checkpoint":
        assert message.startswith(f"Checkpoint '{path}' is truncated or corrupt: "), (mutation, message)
    elif not data.startswith(b"PK\x03\x04"):  # not a zip archive from its start: read as ONNX, and refused
        assert message.startswith(f"'{path}' is not a readable ONNX model"), message
    else:
        assert message.startswith(f"'{path}' is not a ") and "as alexnet-lab export writes it: " in message, message
    assert "\n" not in message
