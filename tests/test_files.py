"""alexnet_lab.files, the one writer module: exclusive temp files, atomic renames, no symlinks followed,
the umask honoured, nothing removed that the program did not create, any legal target name."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from alexnet_lab import files
from alexnet_lab.errors import UserError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_written_file_appears_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    files.write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_writer(target) as fh:
        fh.write(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_take_their_mode_from_the_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        files.write_bytes(tmp_path / "w.bin", b"x")
        with files.atomic_path(tmp_path / "p.onnx") as tmp:
            tmp.write_bytes(b"y")  # a library writing by path
            os.chmod(tmp, 0o600)   # ... and choosing its own mode, as tempfile.mkstemp does
    finally:
        os.umask(old)
    assert mode(tmp_path / "w.bin") == expected
    assert mode(tmp_path / "p.onnx") == expected


def test_a_symlinked_target_is_refused_and_its_destination_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "config.json"
    link.symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        files.write_text(link, "hostile")
    with pytest.raises(UserError, match="symbolic link"), files.atomic_path(link):
        pass
    assert victim.read_text() == "precious" and link.is_symlink()


def test_a_dangling_symlink_target_is_not_created(tmp_path):
    """The attack of a shared run folder: a link to a not-yet-existing .pth file in site-packages."""
    site = tmp_path / "site-packages"
    site.mkdir()
    (tmp_path / "report.html").symlink_to(site / "evil.pth")
    with pytest.raises(UserError, match="symbolic link"):
        files.write_text(tmp_path / "report.html", "\nimport os\n")
    assert list(site.iterdir()) == []


def test_appending_refuses_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("x")
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        files.append_text(tmp_path / "metrics.jsonl", "{}\n")
    assert victim.read_text() == "x"


def test_appending_refuses_a_fifo_without_hanging(tmp_path):
    fifo = tmp_path / "metrics.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UserError):
        files.append_text(fifo, "{}\n")


def test_temp_names_are_short_so_any_legal_target_name_works(tmp_path):
    name = "r" * 250 + ".html"  # 255 bytes: the longest legal name
    files.write_text(tmp_path / name, "page")
    with files.atomic_path(tmp_path / ("m" * 250 + ".onnx")) as tmp:
        tmp.write_bytes(b"model")
    assert (tmp_path / name).read_text() == "page"
    assert (tmp_path / ("m" * 250 + ".onnx")).read_bytes() == b"model"
    assert sorted(p.name[:1] for p in tmp_path.iterdir()) == ["m", "r"]


def test_a_write_into_a_read_only_folder_says_so_not_free_disk_space(tmp_path, monkeypatch):
    """As root every folder is writable, so the kernel's answer for a read-only mount is simulated."""
    import errno

    def read_only(path, flags=0):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files, "_create_exclusive", read_only)
    with pytest.raises(UserError, match="not writable") as info:
        files.write_text(tmp_path / "a", "x")
    assert f"Cannot write '{tmp_path / 'a'}': Read-only file system." in str(info.value)
    assert "disk space" not in str(info.value)


def test_the_advice_follows_the_cause():
    import errno

    assert "Free disk space" in files.advice(OSError(errno.ENOSPC, "full"))
    assert "not writable" in files.advice(OSError(errno.EROFS, "read-only"))
    assert "not writable" in files.advice(OSError(errno.EACCES, "denied"))
    assert "shorter" in files.advice(OSError(errno.ENAMETOOLONG, "long"))


def test_stale_temps_are_removed_but_not_links_or_other_files(tmp_path):
    own_file = tmp_path / ".alexnet-lab-000000000000.tmp"
    own_file.write_bytes(b"torn")
    own_dir = tmp_path / ".alexnet-lab-111111111111.tmp"
    own_dir.mkdir()
    (own_dir / "f.onnx").write_bytes(b"torn")
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / ".alexnet-lab-222222222222.tmp"
    link.symlink_to(victim)
    other = tmp_path / ".checkpoint.pt.abc.tmp"  # not this program's naming: not ours to judge
    other.write_text("user's")
    removed = files.remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([own_file.name, own_dir.name])
    assert link.is_symlink() and victim.read_text() == "keep" and other.exists()


def test_an_output_file_is_never_an_input_even_with_force(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"weights")
    with pytest.raises(UserError, match="is the file this command reads"):
        files.check_output_file(checkpoint, force=True, inputs=(checkpoint,))
    alias = tmp_path / "alias.pt"
    os.link(checkpoint, alias)  # the same file under another name
    with pytest.raises(UserError, match="is the file this command reads"):
        files.check_output_file(alias, force=True, inputs=(checkpoint,))


def test_an_existing_output_file_needs_force(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"mine")
    with pytest.raises(UserError, match="--force"):
        files.check_output_file(out)
    assert files.check_output_file(out, force=True) == out
    with pytest.raises(UserError, match="empty"):
        files.check_output_file("")
    with pytest.raises(UserError, match="folder"):
        files.check_output_file(tmp_path)
