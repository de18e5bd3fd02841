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


# --- only regular files are written ---------------------------------------------------------------------

def make_node(path: Path, kind: str) -> Path:
    """A non-regular file of `kind` at `path` (a device node of our own making: never the machine's /dev/null)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "character device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # the numbers of /dev/null
        except PermissionError:
            pytest.skip("making a device node needs root")
    elif kind == "socket":
        import socket

        with socket.socket(socket.AF_UNIX) as sock:  # bound by a short relative name: AF_UNIX paths are short
            cwd = os.getcwd()
            os.chdir(path.parent)
            try:
                sock.bind(path.name)
            finally:
                os.chdir(cwd)
    else:
        path.mkdir()
    return path


NODE_KINDS = {"fifo": ("a FIFO", stat.S_ISFIFO), "character device": ("a character device", stat.S_ISCHR),
              "socket": ("a socket", stat.S_ISSOCK), "folder": ("a folder", stat.S_ISDIR)}


@pytest.mark.parametrize("kind", list(NODE_KINDS))
def test_a_target_that_is_not_a_regular_file_is_refused_even_with_force_and_left_as_it_was(tmp_path, kind):
    said, is_kind = NODE_KINDS[kind]
    node = make_node(tmp_path / "out", kind)
    before = os.lstat(node)
    attempts = [lambda: files.write_bytes(node, b"x"), lambda: files.check_output_file(node, force=True)]
    for attempt in attempts:
        with pytest.raises(UserError, match=f"it is {said}.*writes only regular files.*Choose a file name"):
            attempt()
    with pytest.raises(UserError, match=said), files.atomic_path(node) as tmp:
        tmp.write_bytes(b"model")
    after = os.lstat(node)
    assert is_kind(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp left behind


@pytest.mark.parametrize("kind", ["fifo", "character device"])
def test_a_node_that_appears_while_the_file_is_written_is_not_replaced(tmp_path, kind):
    """The check runs again just before the rename, which would land on whatever is there."""
    target = tmp_path / "out"
    with pytest.raises(UserError, match=NODE_KINDS[kind][0]), files.atomic_writer(target) as fh:
        fh.write(b"predictions")
        make_node(target, kind)
    assert NODE_KINDS[kind][1](os.lstat(target).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_head_reads_only_a_regular_file_and_never_blocks(tmp_path):
    (tmp_path / "page.html").write_bytes(b"<meta name=generator>" + b"x" * 5000)
    assert files.head(tmp_path / "page.html", 21) == b"<meta name=generator>"
    os.mkfifo(tmp_path / "fifo")  # no writer: an open without O_NONBLOCK would wait for ever
    (tmp_path / "link").symlink_to(tmp_path / "page.html")
    assert files.head(tmp_path / "fifo") == files.head(tmp_path / "link") == files.head(tmp_path / "none") == b""


# --- --force and a run's files -------------------------------------------------------------------------------

def test_force_never_replaces_a_file_of_a_run_folder_that_is_not_the_commands_own(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    for name in ("best.pt", "metrics.csv", "notes.txt"):
        (run / name).write_bytes(b"the run's")
        with pytest.raises(UserError, match="never replaces a run's files, not even with --force"):
            files.check_output_file(run / name, force=True)
        assert (run / name).read_bytes() == b"the run's"
    page = run / "report.html"
    page.write_text("an earlier page")
    assert files.check_output_file(page, force=True, own=lambda p: p == page) == page  # its own: with --force
    with pytest.raises(UserError, match="already exists.*--force"):
        files.check_output_file(page, own=lambda p: p == page)
    assert files.check_own_output(page, lambda p: p == page) == page  # a fixed name regenerated: no --force
    elsewhere = tmp_path / "notes.txt"  # not in a run folder: --force decides, as before
    elsewhere.write_text("mine")
    assert files.check_output_file(elsewhere, force=True) == elsewhere


def test_a_folder_with_only_a_checkpoint_is_a_run_folder(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"weights")
    (tmp_path / "model.onnx").write_bytes(b"an earlier export")
    assert files.in_run_folder(tmp_path / "model.onnx") and not files.in_run_folder(tmp_path / "run" / "x")
    with pytest.raises(UserError, match="never replaces"):
        files.check_output_file(tmp_path / "model.onnx", force=True)


# --- CSV cells -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_a_csv_text_cell_that_begins_like_a_formula_gets_a_leading_quote(start):
    text = f"{start}HYPERLINK(\"http://x\")"
    assert files.csv_cell(text) == "'" + text


def test_other_csv_cells_and_numbers_are_left_as_they_are():
    import csv
    import io

    assert [files.csv_cell(v) for v in ("a=b", "t-shirt", "'=x", "", " =1")] == ["a=b", "t-shirt", "'=x", "", " =1"]
    cells = [files.csv_cell(v) for v in (-3, -0.5, 7)]
    assert cells == [-3, -0.5, 7]  # numbers stay numbers, negative ones included
    text = io.StringIO()
    csv.writer(text).writerow(cells)
    assert [float(v) for v in next(csv.reader(io.StringIO(text.getvalue())))] == [-3, -0.5, 7]
