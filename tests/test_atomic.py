"""Atomic writers: whole files or none, the umask's modes, Unix CSVs, staged folders."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vitkit.atomic import staged_dir, write_csv_atomic, write_text_atomic


@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_staged_folders_get_the_umask_modes(tmp_path: Path, umask_027: None) -> None:
    text = write_text_atomic(tmp_path / "a" / "note.txt", "hello")
    assert _mode(text) == 0o640 and text.read_text() == "hello"
    with staged_dir(tmp_path / "out") as staging:
        (staging / "x.txt").write_text("x")
    assert _mode(tmp_path / "out") == 0o750, "mkdtemp's 0700 would hide it from a group"
    assert (tmp_path / "out" / "x.txt").read_text() == "x"


def test_csv_has_unix_line_endings(tmp_path: Path) -> None:
    path = write_csv_atomic(tmp_path / "t.csv", ["path", "label"], [["a b.png", "x,y"]])
    assert path.read_bytes() == b'path,label\na b.png,"x,y"\n'


def test_a_failed_staged_build_leaves_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(target) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging left behind"
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with staged_dir(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    from vitkit.atomic import atomic_path

    target = write_text_atomic(tmp_path / "f.txt", "old")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise ValueError
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
