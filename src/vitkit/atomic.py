"""Files and folders that appear whole or not at all, with the modes a plain ``open()`` gives.

Every writer in vitkit goes through here: a reader (or a killed run) sees the old file or the
complete new one, never half of one, and an output folder that is being replaced stays as it
was until its successor is complete. ``tempfile`` makes files 0600 and folders 0700; outputs
are meant to be shared (a service account reading a bundle), so they get the umask's modes.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def swap_in(staging: Path, target: Path) -> None:
    """Replaces the folder ``target`` by ``staging`` (two renames; the old one is deleted last,
    so an interruption leaves one complete folder, never a mix)."""
    if target.exists() or target.is_symlink():
        backup = target.with_name(f".{target.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(target, backup)
        os.replace(staging, target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(staging, target)


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
