"""Files and folders that appear whole or not at all, with the modes a plain ``open()`` gives.

Every writer in vitkit goes through here: a reader (or a killed run) sees the old file or the
complete new one, never half of one, and an output folder that is being replaced stays as it
was until its successor is complete. ``tempfile`` makes files 0600 and folders 0700; outputs
are meant to be shared (a service account reading a bundle), so they get the umask's modes.

The umask is read without being changed (``os.umask`` can only read it by setting it, and a
moment at 0 would give files that other threads create meanwhile mode 0666).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import functools
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

# Linux (4.7 and later) shows the process's umask here.
_PROC_STATUS = Path("/proc/self/status")


def _umask() -> int:
    """The process's umask, read without changing it: from ``/proc/self/status`` on Linux,
    else from the mode the kernel gives a probe file created with 0777."""
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with tempfile.TemporaryDirectory(prefix=".vitkit-umask.") as probe_dir:
        probe = os.path.join(probe_dir, "probe")
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o777))
        return 0o777 & ~stat.S_IMODE(os.stat(probe).st_mode)


def file_mode() -> int:
    """The mode a plain ``open()`` gives a new file (0644 under the usual umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a plain ``mkdir()`` gives a new folder (0755 under the usual umask 022)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write to; on success it becomes ``path``
    (with :func:`file_mode`), on an exception it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(path: Path | str, header: Sequence[str],
                     rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV file with Unix line endings (the csv module's default is CRLF)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def make_staging_dir(target: Path | str) -> Path:
    """An empty hidden folder beside ``target`` to build its replacement in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=target.parent))
    os.chmod(staging, dir_mode())
    return staging


# renameat2's flag that swaps two existing paths in one step (Linux 3.15, glibc 2.28).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the loaded C library (no ldconfig run)
    except OSError:
        return None
    function = getattr(libc, "renameat2", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def _exchange(first: Path, second: Path) -> bool:
    """Swaps two existing paths in one atomic step; False where the system or the file system
    cannot (then nothing happened)."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    # ENOSYS: an old kernel; EINVAL: a file system without the flag (some FUSE and network
    # ones); EPERM/EACCES: a seccomp filter (some containers) that refuses the call itself.
    if code in (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def atomic_exchange_available() -> bool:
    """Whether :func:`swap_in` can replace a folder with no moment in which it is missing
    (an exchange of two scratch folders is tried)."""
    with tempfile.TemporaryDirectory(prefix=".vitkit-exchange.") as scratch:
        first, second = Path(scratch, "a"), Path(scratch, "b")
        first.mkdir()
        second.mkdir()
        return _exchange(first, second)


def swap_in(staging: Path, target: Path) -> None:
    """Replaces the folder ``target`` by ``staging``; the old one is deleted last.

    Where the system allows (Linux: ``renameat2`` with ``RENAME_EXCHANGE``) the two folders
    swap names in one step, so ``target`` names the complete old folder until that instant and
    the complete new one after it: a reader never finds it missing. A reader that reads
    several files of it can still see one file of each (open the files it needs together, or
    retry when they disagree); a file it has open stays readable after the swap.

    Elsewhere (macOS, Windows, file systems without the flag) it takes two renames, the old
    folder to a hidden backup and the new one into place; between the two, ``target`` is
    missing for a moment (a reader should retry), but an interruption still leaves one
    complete folder, never a mix.
    """
    if target.is_symlink() or not target.exists():
        # Nothing to swap with; a symlink is replaced as a path, never followed.
        _replace_path(staging, target)
        return
    if _exchange(staging, target):
        _remove(staging)  # the old folder, now under the staging name
        return
    backup = target.with_name(f".{target.name}.old")
    _remove(backup)
    os.replace(target, backup)
    os.replace(staging, target)
    _remove(backup)


def _replace_path(staging: Path, target: Path) -> None:
    if target.is_symlink():
        if _exchange(staging, target):
            _remove(staging)  # the old symlink, now under the staging name
            return
        target.unlink()
    os.replace(staging, target)


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(target: Path | str) -> Iterator[Path]:
    """Yields a staging folder to build ``target`` in; it replaces ``target`` only when the
    block completes, and is removed when the block fails (``target`` stays as it was)."""
    target = Path(target)
    staging = make_staging_dir(target)
    try:
        yield staging
        swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
