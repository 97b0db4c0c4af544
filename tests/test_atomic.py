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


@pytest.fixture
def umask_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``os.umask`` call from here on (the real one still runs)."""
    calls: list[int] = []
    real = os.umask

    def spy(mask: int) -> int:
        calls.append(mask)
        return real(mask)

    monkeypatch.setattr(os, "umask", spy)
    return calls


def test_the_umask_is_read_without_changing_it(tmp_path: Path, umask_027: None,
                                               umask_calls: list[int]) -> None:
    """Setting the umask to 0 to read it would give another thread's new files mode 0666 for
    that moment; the modes must come without any ``os.umask`` call."""
    from vitkit.atomic import dir_mode, file_mode

    assert (file_mode(), dir_mode()) == (0o640, 0o750)
    write_text_atomic(tmp_path / "f.txt", "x")
    with staged_dir(tmp_path / "out") as staging:
        (staging / "x.txt").write_text("x")
    assert umask_calls == []


def test_the_umask_is_read_without_proc_too(tmp_path: Path, umask_027: None,
                                            umask_calls: list[int],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import vitkit.atomic

    monkeypatch.setattr(vitkit.atomic, "_PROC_STATUS", tmp_path / "missing")
    assert (vitkit.atomic.file_mode(), vitkit.atomic.dir_mode()) == (0o640, 0o750)
    assert umask_calls == [] and list(tmp_path.iterdir()) == []  # the probe cleans up


_READER = """
import os, sys
target, stop = sys.argv[1], sys.argv[2]
misses = checks = 0
while not os.path.exists(stop):
    checks += 1
    misses += not os.path.exists(target)
print(misses, checks)
"""


def test_a_reader_never_finds_the_folder_missing_during_a_swap(tmp_path: Path) -> None:
    """A reader in another process checks the target folder in a tight loop while it is
    replaced 300 times. The former two renames left it missing for thousands of the
    reader's checks per run (1,543-6,005 of ~80,000-97,000 measured); an atomic exchange
    leaves it missing for none."""
    import subprocess
    import sys
    import time

    from vitkit.atomic import atomic_exchange_available

    if not atomic_exchange_available():
        pytest.skip("no atomic exchange of two paths on this system (see swap_in)")
    target = tmp_path / "out"
    with staged_dir(target) as staging:
        (staging / "marker").write_text("0")
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(target), str(tmp_path / "stop")],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the reader is looping
        for i in range(300):
            with staged_dir(target) as staging:
                (staging / "marker").write_text(str(i))
    finally:
        (tmp_path / "stop").write_text("")
        misses, checks = map(int, reader.communicate(timeout=30)[0].split())
    assert checks > 1000, "the reader barely ran; the test would prove nothing"
    assert misses == 0
    assert (target / "marker").read_text() == "299"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stop"], "nothing left over"


def test_the_swap_without_an_atomic_exchange_still_replaces_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vitkit.atomic

    monkeypatch.setattr(vitkit.atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    for text in ("old", "new"):
        with staged_dir(target) as staging:
            (staging / "marker").write_text(text)
    assert (target / "marker").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_symlinked_target_is_replaced_by_a_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    with staged_dir(tmp_path / "out") as staging:
        (staging / "marker").write_text("new")
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out" / "marker").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "real"]


def test_dump_config_keeps_the_old_file_when_the_write_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fails while the config is flushed: the old config stays whole (a plain
    ``write_text`` truncates it first and never syncs)."""
    from pydantic import BaseModel

    from vitkit.config import dump_config

    class Config(BaseModel):
        name: str

    path = tmp_path / "config.yaml"
    dump_config(Config(name="old"), path)

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        dump_config(Config(name="new"), path)
    assert path.read_text() == "name: old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
