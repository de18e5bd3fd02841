"""Every file alexnet-lab writes goes through here: a fresh temp file (O_EXCL|O_NOFOLLOW, the umask's mode)
fsync'ed and renamed over a target that is missing or a regular file (never a link, a folder, a device, a FIFO).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import IO, Callable, Iterator

from alexnet_lab.errors import UserError

TEMP_PREFIX = ".alexnet-lab-"  # + 12 hex digits + TEMP_SUFFIX: 30 characters, whatever the target
TEMP_SUFFIX = ".tmp"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def advice(exc: OSError, where: str = "folder") -> str:
    """What to do about a failed write, by its cause (a read-only folder is not a full disk)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"Free disk space or choose another {where}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"The folder is not writable by you: choose another {where}"
    if exc.errno == errno.ENAMETOOLONG:
        return "Choose a shorter file name"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "A folder on the way does not exist or is a file: choose another path"
    if exc.errno == errno.ELOOP:
        return "It is a symbolic link, which alexnet-lab never writes through: remove the link or choose another path"
    return "Choose another path"


class WriteError(UserError):
    """A file could not be written; the message names the file, the cause and what to do."""

    def __init__(self, path: str | os.PathLike, exc: OSError, message: str | None = None):
        self.path = Path(path)
        self.cause = exc
        if message is None:
            message = f"Cannot write '{path}': {exc.strerror or exc}. {advice(exc)}."
        super().__init__(message)


def is_symlink(path: Path) -> bool:  # a folder prepared by someone else is untrusted input
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def check_target(path: Path) -> None:
    """Refuse a target that is a symlink (a shared folder may hold one aimed at the user's files) or anything
    but a regular file (`--force` onto /dev/null would have replaced it with a file). Missing is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise WriteError(path, exc) from None
    if stat.S_ISLNK(mode):
        raise WriteError(path, None, message=f"Refused to write '{path}': it is a symbolic link (to "
                                       f"'{os.readlink(path)}'), and alexnet-lab never writes through one. "
                                       "Remove the link, or choose another folder.")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
        raise WriteError(path, None, message=f"Refused to write '{path}': it is {kind}, and alexnet-lab writes "
                                       "only regular files, never in place of anything else (not even with "
                                       "--force). Choose a file name.")


def _temp_name(folder: Path) -> Path:
    return folder / f"{TEMP_PREFIX}{secrets.token_hex(6)}{TEMP_SUFFIX}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is already atomic
    finally:
        os.close(fd)


def _create_exclusive(path: Path, flags: int = os.O_WRONLY) -> int:
    """A new file, never an existing name nor a link (O_EXCL refuses both), mode from the umask."""
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666)


def _commit(tmp: Path, path: Path) -> None:
    check_target(path)  # again just before the rename: the folder may have changed meanwhile
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", *, encoding: str = "utf-8",
                  verify: Callable[[Path], None] | None = None) -> Iterator[IO]:
    """`with atomic_writer(path) as fh:`: the target appears whole when the block succeeds, unchanged (the temp
    file removed) when it fails; `verify(temp_path)` may refuse the file first. OSError -> WriteError."""
    path = Path(path)
    check_target(path)
    try:
        fd = _create_exclusive(tmp := _temp_name(path.parent))
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if verify is not None:
            verify(tmp)
        _commit(tmp, path)
    except OSError as exc:
        _remove_own(tmp)
        raise WriteError(path, exc) from None
    except BaseException:
        _remove_own(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """For writers that need a path (onnx): one inside a fresh private (0700) folder beside `path`, renamed to
    `path` when the block succeeds; the folder is removed either way."""
    path = Path(path)
    check_target(path)
    try:
        folder = Path(_make_private_dir(path.parent))
    except OSError as exc:
        raise WriteError(path, exc) from None
    tmp = folder / ("f" + "".join(path.suffixes[-1:])[:16])
    try:
        yield tmp
        if not tmp.is_file() or is_symlink(tmp):
            raise WriteError(path, None, message=f"Writing '{path}' produced no file.")
        os.chmod(tmp, 0o666 & ~_umask())  # writers that chose their own mode still honour the umask
        _commit(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _make_private_dir(parent: Path) -> str:
    for _ in range(100):
        candidate = _temp_name(parent)
        try:
            os.mkdir(candidate, 0o700)
            return str(candidate)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_writer(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_writer(path, "w") as fh:
        fh.write(text)
    return Path(path)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append to a file this program created (metrics.jsonl): never through a link, never a FIFO."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise WriteError(path, None, message=f"Refused to write '{path}': it is not a regular file.")
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise WriteError(path, exc) from None


def _remove_own(tmp: Path) -> None:
    """Remove a temp file this process created (a name nobody else could have taken: O_EXCL)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def remove_stale_temps(folder: str | os.PathLike) -> list[str]:
    """Remove the temp files and folders a hard kill left in `folder` (this program's names, this user's, never
    a link); return their names."""
    removed = []
    for entry in Path(folder).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            info = os.lstat(entry)
        except OSError:
            continue
        if info.st_uid != os.getuid() or stat.S_ISLNK(info.st_mode):
            continue
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(entry, ignore_errors=True)
        elif stat.S_ISREG(info.st_mode):
            _remove_own(entry)
        else:
            continue
        removed.append(entry.name)
    return removed


RUN_MARKERS = ("checkpoint.pt", "config.json")  # a folder holding either is a training run's (engine/run_dir.py)


def in_run_folder(path: str | os.PathLike) -> bool:
    """Whether the folder that holds `path` is a run folder (it holds a run's checkpoint.pt or config.json)."""
    return any(os.path.lexists(Path(path).parent / name) for name in RUN_MARKERS)


def head(path: str | os.PathLike, size: int = 4096) -> bytes:
    """The first `size` bytes of a regular file, b"" for anything else; never follows a link, never blocks: for
    telling a file this program wrote by its mark."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return b""
    try:
        return os.pread(fd, size, 0) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


def check_output_file(out: str | os.PathLike, *, force: bool = False, flag: str = "--out", inputs: tuple = (),
                      own: Callable[[Path], bool] | None = None) -> Path:
    """A user-named output file: never one of the command's `inputs`, nor anything but a regular file, and an
    existing one only with --force; in a run folder only if `own(out)` says it is this command's marked
    earlier output (--force never replaces a run's checkpoint, config or metrics, nor a stranger's file)."""
    if not str(out).strip():
        raise UserError(f"{flag} is empty. Pass a file name.")
    out = Path(out)
    for source in inputs:
        with contextlib.suppress(OSError):
            if out.exists() and os.path.samefile(out, source):
                raise UserError(f"{flag} '{out}' is the file this command reads ({source}); writing there would "
                                "destroy it. Choose another file name.")
    check_target(out)
    if os.path.lexists(out) and not (own is not None and own(out)) and in_run_folder(out):
        raise UserError(f"{flag} '{out}' is a file in the run folder '{out.parent}' that this command did not "
                        "write, and alexnet-lab never replaces a run's files, not even with --force. Choose "
                        "another file name or folder.")
    if out.exists() and not force:
        raise UserError(f"{flag} '{out}' already exists; alexnet-lab does not overwrite a file it did not just "
                        "make. Choose another name, or pass --force to replace it.")
    if out.parent.exists() and not out.parent.is_dir():
        raise UserError(f"Cannot write {flag} '{out}': '{out.parent}' is a file, not a folder.")
    return out


def check_own_output(path: str | os.PathLike, own: Callable[[Path], bool], *, force: bool = False,
                     flag: str = "--out", inputs: tuple = ()) -> Path:
    """A file a command writes under a fixed name (report.html, evaluation.json...): its own marked earlier
    output (`own(path)`) is replaced as a matter of course, anything else as `check_output_file` says."""
    return check_output_file(path, force=force or own(Path(path)), flag=flag, inputs=inputs, own=own)


CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP)


def csv_cell(value):
    """A CSV cell safe to open in a spreadsheet: text that begins like a formula gets a leading ' (OWASP);
    numbers stay numbers."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS):
        return "'" + value
    return value
