"""Reading a path,group CSV and matching its rows to images."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitkit.data.groups import match_groups, read_group_csv
from vitkit.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, list[Path]]:
    """DATA/val/{ants,bees}/... paths (matching does not read the files)."""
    root = tmp_path / "data"
    paths = [root / "val" / "ants" / "a1.jpg", root / "val" / "ants" / "shared.jpg",
             root / "val" / "bees" / "b1.jpg", root / "val" / "bees" / "shared.jpg",
             root / "train" / "ants" / "t1.jpg"]
    return root, paths


def test_reads_header_and_rows(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "g.csv", "path,group\nx/1.jpg, north \n\ny.jpg,south\n")
    attribute, rows = read_group_csv(csv_path)
    assert attribute == "group"
    assert [(r.line, r.path, r.group) for r in rows] == [(2, "x/1.jpg", "north"),
                                                        (4, "y.jpg", "south")]


def test_named_attribute_column(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "g.csv", "Site,path,camera\nA,1.jpg,canon\nB,2.jpg,nikon\n")
    attribute, rows = read_group_csv(csv_path, "camera")
    assert attribute == "camera"
    assert [r.group for r in rows] == ["canon", "nikon"]
    attribute, rows = read_group_csv(csv_path, "site")  # header names are case-insensitive
    assert attribute == "Site" and [r.group for r in rows] == ["A", "B"]


@pytest.mark.parametrize(("text", "column", "message"), [
    ("file,group\n1.jpg,a\n", "group", r"line 1: .*no 'path'"),
    ("path,site\n1.jpg,a\n", "group", r"line 1: .*no 'group'"),
    ("path,group\n1.jpg,a\n2.jpg,\n", "group", r"line 3: the group value is empty"),
    ("path,group\n1.jpg,a\n,b\n", "group", r"line 3: the path is empty"),
    ("path,group\n1.jpg,a\n\n2.jpg\n", "group", r"line 4: 1 cell"),
    ("path,group\n", "group", r"no rows"),
    ("", "group", r"empty"),
])
def test_bad_csv_names_the_line(tmp_path: Path, text: str, column: str, message: str) -> None:
    csv_path = write(tmp_path / "g.csv", text)
    with pytest.raises(DataError, match=message):
        read_group_csv(csv_path, column)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read the group file"):
        read_group_csv(tmp_path / "nope.csv")


def test_matching_by_path_relative_path_and_unique_name(
        tmp_path: Path, images: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, paths = images
    a1, ants_shared, b1, bees_shared, t1 = paths
    csv_dir = tmp_path / "meta"
    csv_dir.mkdir()
    csv_path = write(csv_dir / "g.csv", "\n".join([
        "path,group",
        f"{a1},north",                      # absolute path
        "val/bees/shared.jpg,south",        # relative to DATA
        "../data/val/ants/shared.jpg,east",  # relative to the CSV's folder
        "b1.jpg,south",                     # unique file name
        "shared.jpg,west",                  # name shared by two images: ambiguous
        "val/ants/ghost.jpg,north",         # no such image
        "t1.jpg,north",                     # a training image: matched
    ]) + "\n")
    monkeypatch.chdir(tmp_path)
    _, rows = read_group_csv(csv_path)
    match = match_groups(rows, paths, root, csv_path)
    assert match.groups == {a1: "north", bees_shared: "south", ants_shared: "east",
                            b1: "south", t1: "north"}
    assert [r.line for r in match.unmatched_rows] == [6, 7]
    assert [r.line for r in match.ambiguous_rows] == [6]


def test_relative_to_working_folder(tmp_path: Path, images: tuple[Path, list[Path]],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root, paths = images
    csv_path = write(tmp_path / "g.csv", "path,group\ndata/val/ants/shared.jpg,x\n")
    monkeypatch.chdir(tmp_path)
    match = match_groups(read_group_csv(csv_path)[1], paths, root, csv_path)
    assert match.groups == {paths[1]: "x"}


def test_two_groups_for_one_image_is_refused(tmp_path: Path,
                                             images: tuple[Path, list[Path]]) -> None:
    root, paths = images
    csv_path = write(tmp_path / "g.csv", f"path,group\n{paths[0]},a\na1.jpg,b\n")
    with pytest.raises(DataError, match=r"lines 2 and 3: .*'a' and in group 'b'"):
        match_groups(read_group_csv(csv_path)[1], paths, root, csv_path)
