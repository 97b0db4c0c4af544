"""Image + audio manifests: empty cells are missing inputs, bad rows are clear errors with
their line, and only a CSV with an audio column is one."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitkit.data.paired import is_paired_manifest, read_paired_manifest
from vitkit.errors import DataError


def _csv(folder: Path, text: str, name: str = "pairs.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_empty_cells_are_missing_inputs_and_paths_are_relative_to_the_csv(tmp_path: Path
                                                                           ) -> None:
    (tmp_path / "sub").mkdir()
    path = _csv(tmp_path / "sub", "Image,Audio,Label,Split\n"
                "img/a.png,wav/a.wav,7,train\n"
                ",wav/b.wav,3,VALIDATION\n"
                "img/c.png,,3,\n"
                "\n"
                f"{tmp_path}/abs.png,,1,test\n")
    rows = read_paired_manifest(path)
    assert [(r.image, r.audio, r.label, r.split, r.line) for r in rows] == [
        (tmp_path / "sub/img/a.png", tmp_path / "sub/wav/a.wav", "7", "train", 2),
        (None, tmp_path / "sub/wav/b.wav", "3", "val", 3),
        (tmp_path / "sub/img/c.png", None, "3", None, 4),
        (tmp_path / "abs.png", None, "1", "test", 6)]
    assert rows[1].path("image") is None and rows[1].name == str(tmp_path / "sub/wav/b.wav")


@pytest.mark.parametrize(("text", "message"), [
    ("image,audio,label\na.png,a.wav,1\n,,2\n", r"line 3: the row has neither an image nor an "
                                                r"audio file"),
    ("image,audio,label\na.png,a.wav,\n", r"line 2: the row has no label"),
    ("image,audio,label,split\na.png,,1,holdout\n", r"line 2: unknown split 'holdout'"),
    ("image,label\na.png,1\n", r"missing column\(s\) audio"),
    ("image,audio,label,speaker\na.png,,1,theo\n", r"unknown column\(s\) 'speaker'"),
    ("image,audio,audio,label\n", r"repeated column\(s\) audio"),
    ("image,audio,label\na.png,b.wav,1,extra\n", r"line 2: 4 cells for 3 columns"),
    ("image,audio,label\n", r"a header but no rows"),
    ("", r"is empty"),
])
def test_bad_manifests_say_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_paired_manifest(_csv(tmp_path, text))


def test_prediction_manifests_need_no_labels(tmp_path: Path) -> None:
    rows = read_paired_manifest(_csv(tmp_path, "image,audio\na.png,b.wav\n,c.wav\n"),
                                need_labels=False)
    assert [r.label for r in rows] == [None, None]
    with pytest.raises(DataError, match="missing column"):
        read_paired_manifest(_csv(tmp_path, "image,audio\na.png,b.wav\n"))


def test_only_a_csv_with_an_audio_column_is_an_image_audio_manifest(tmp_path: Path) -> None:
    assert is_paired_manifest(_csv(tmp_path, "image,audio,label\n", "a.csv"))
    assert not is_paired_manifest(_csv(tmp_path, "path,label\nx.png,cat\n", "b.csv"))
    assert not is_paired_manifest(_csv(tmp_path, "image,audio,label\n", "c.txt"))
    assert not is_paired_manifest(tmp_path / "missing.csv")
    assert not is_paired_manifest(tmp_path)
    (tmp_path / "latin.csv").write_bytes(b"\xff\xfe\x00audio")
    assert not is_paired_manifest(tmp_path / "latin.csv")
