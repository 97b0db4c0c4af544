"""Layout detection: folder per class, split folders, CSV manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitkit.data.layouts import Sample, scan
from vitkit.errors import DataError


def test_folders_layout_recursive_and_ignores_non_data(tmp_path, images):
    images.rgb(tmp_path / "dog" / "b.jpg")
    images.rgb(tmp_path / "cat" / "a.jpg")
    images.rgb(tmp_path / "cat" / "nested" / "deeper" / "c.png")
    images.text(tmp_path / "cat" / "not_really.jpg")  # wrong content: still a candidate
    images.rgb(tmp_path / "cat" / "odd.extension")  # odd extension: still a candidate
    images.text(tmp_path / "cat" / "notes.txt")
    images.text(tmp_path / "cat" / "README.md")
    images.text(tmp_path / "cat" / "meta.json")
    images.text(tmp_path / "cat" / ".DS_Store")
    images.rgb(tmp_path / "cat" / ".hidden_dir" / "x.jpg")
    images.rgb(tmp_path / ".cache" / "y.jpg")
    images.text(tmp_path / "labels.csv")

    data = scan(tmp_path)

    assert data.layout == "folders"
    assert data.root == tmp_path
    assert data.classes == ["cat", "dog"]
    rel = [(s.path.relative_to(tmp_path).as_posix(), s.label, s.split) for s in data.samples]
    assert rel == [
        ("cat/a.jpg", "cat", None),
        ("cat/nested/deeper/c.png", "cat", None),
        ("cat/not_really.jpg", "cat", None),
        ("cat/odd.extension", "cat", None),
        ("dog/b.jpg", "dog", None),
    ]
    assert all(s.path.is_absolute() for s in data.samples)


def test_scan_accepts_str_and_is_deterministic(tmp_path, images):
    images.class_tree(tmp_path, {"b": 3, "a": 2})
    assert scan(str(tmp_path)) == scan(tmp_path)


def test_splits_layout_with_val_and_test(tmp_path, images):
    for split in ("train", "val", "test"):
        images.class_tree(tmp_path / split, {"cat": 2, "dog": 1})

    data = scan(tmp_path)

    assert data.layout == "splits"
    assert data.classes == ["cat", "dog"]
    splits = [s.split for s in data.samples]
    assert splits == ["train"] * 3 + ["val"] * 3 + ["test"] * 3
    assert data.samples[0] == Sample(tmp_path / "train" / "cat" / "img_000.jpg", "cat", "train")


@pytest.mark.parametrize("val_name", ["valid", "validation", "Val"])
def test_splits_layout_accepts_val_aliases(tmp_path, images, val_name):
    images.class_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    images.class_tree(tmp_path / val_name, {"cat": 1, "dog": 1})

    data = scan(tmp_path)

    assert data.layout == "splits"
    assert sorted({s.split for s in data.samples}) == ["train", "val"]


def test_splits_layout_train_only(tmp_path, images):
    images.class_tree(tmp_path / "train", {"cat": 3, "dog": 3})

    data = scan(tmp_path)

    assert data.layout == "splits"
    assert {s.split for s in data.samples} == {"train"}


def test_splits_layout_class_only_in_val_is_a_class(tmp_path, images):
    images.class_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    images.class_tree(tmp_path / "val", {"cat": 1, "bird": 1})
    assert scan(tmp_path).classes == ["bird", "cat", "dog"]


def test_two_val_folders_are_ambiguous(tmp_path, images):
    images.class_tree(tmp_path / "train", {"cat": 1})
    images.class_tree(tmp_path / "val", {"cat": 1})
    images.class_tree(tmp_path / "valid", {"cat": 1})
    with pytest.raises(DataError, match="Keep one of them"):
        scan(tmp_path)


def test_val_without_train_is_an_error(tmp_path, images):
    images.class_tree(tmp_path / "val", {"cat": 1, "dog": 1})
    with pytest.raises(DataError, match="no train/ folder"):
        scan(tmp_path)


def test_csv_without_split_column(tmp_path, images):
    images.rgb(tmp_path / "imgs" / "a.jpg")
    absolute = images.rgb(tmp_path / "elsewhere" / "b.png")
    manifest = tmp_path / "imgs" / "manifest.csv"
    manifest.write_text(f"path,label\na.jpg,cat\n{absolute},dog\nmissing.jpg,dog\n")

    data = scan(manifest)

    assert data.layout == "csv"
    assert data.root == manifest
    assert data.classes == ["cat", "dog"]
    assert data.samples == [
        Sample(tmp_path / "imgs" / "a.jpg", "cat", None),
        Sample(absolute, "dog", None),
        Sample(tmp_path / "imgs" / "missing.jpg", "dog", None),  # kept; validation skips it
    ]


def test_csv_with_split_column(tmp_path, images):
    images.class_tree(tmp_path, {"cat": 2, "dog": 2})
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "\ufeffPath, Label ,SPLIT\n"  # BOM, spacing and case are tolerated
        "cat/img_000.jpg,cat,train\n"
        "cat/img_001.jpg,cat,Validation\n"
        "dog/img_000.jpg,dog,test\n"
        "\n"
        "dog/img_001.jpg,dog,\n"
    )

    data = scan(manifest)

    assert [(s.path.name, s.label, s.split) for s in data.samples] == [
        ("img_000.jpg", "cat", "train"),
        ("img_001.jpg", "cat", "val"),
        ("img_000.jpg", "dog", "test"),
        ("img_001.jpg", "dog", None),
    ]


def test_csv_columns_in_any_order(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("label,split,path\ncat,train,a.jpg\n")
    assert scan(manifest).samples == [Sample(tmp_path / "a.jpg", "cat", "train")]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("file,class\na.jpg,cat\n", "bad header"),
        ("path\na.jpg\n", "missing column"),
        ("path,label,fold\na.jpg,cat,1\n", "unknown column"),
        ("path,label,label\na.jpg,cat,dog\n", "repeated column"),
        ("", "empty"),
        ("path,label\n", "lists no images"),
        ("path,label,split\na.jpg,cat,holdout\n", "line 2: unknown split 'holdout'"),
        ("path,label\na.jpg,\n", "line 2: every row needs a path and a label"),
        ("path,label\na.jpg,cat\n./a.jpg,dog\n", "already listed on line 2"),
    ],
)
def test_csv_errors(tmp_path, content, match):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(DataError, match=match) as excinfo:
        scan(manifest)
    assert str(manifest) in str(excinfo.value)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nope")


def test_file_that_is_not_a_csv(tmp_path, images):
    with pytest.raises(DataError, match="not a .csv manifest"):
        scan(images.rgb(tmp_path / "a.jpg"))


def test_loose_images_without_class_folders(tmp_path, images):
    images.rgb(tmp_path / "a.jpg")
    images.rgb(tmp_path / "b.jpg")
    with pytest.raises(DataError, match="no class folders") as excinfo:
        scan(tmp_path)
    message = str(excinfo.value)
    assert "2 loose file(s)" in message
    assert "DATA/<class>/" in message and "DATA/train/" in message and "CSV" in message


def test_empty_root(tmp_path):
    with pytest.raises(DataError, match="no class folders"):
        scan(tmp_path)


def test_empty_class_folder(tmp_path, images):
    images.class_tree(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    images.text(tmp_path / "dog" / "notes.txt")
    with pytest.raises(DataError, match=r"without any image: .*dog"):
        scan(tmp_path)


def test_all_class_folders_empty(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="contain no images"):
        scan(tmp_path)


def test_split_layout_train_without_class_folders(tmp_path, images):
    images.rgb(tmp_path / "train" / "a.jpg")
    with pytest.raises(DataError, match=f"no class folders found in {Path(tmp_path, 'train')}"):
        scan(tmp_path)
