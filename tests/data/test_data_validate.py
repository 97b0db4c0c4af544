"""validate_samples on a folder seeded with broken and odd images; skipped.csv; check_usable."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest

from vitkit.data.images import reason_kind
from vitkit.data.layouts import Sample, ensure_validation_split, scan
from vitkit.data.validate import (
    SkippedImage,
    ValidationReport,
    check_usable,
    validate_samples,
    write_skipped_csv,
)
from vitkit.errors import DataError

EXPECTED_SKIPPED = {
    "cat/empty.jpg": "empty file",
    "cat/text.jpg": "not an image",
    "cat/tiny.png": "too small",
    "dog/bomb.png": "decompression bomb",
    "dog/truncated.jpg": "truncated or corrupt",
}
EXPECTED_USABLE = [
    "cat/cmyk.jpg",
    "cat/exif6.jpg",
    "cat/good.jpg",
    "cat/gray.jpg",
    "dog/deep16.png",
    "dog/palette.png",
    "dog/photo.data",
    "dog/rgba.png",
]


@pytest.fixture
def messy_folder(tmp_path, images) -> Path:
    root = tmp_path / "DATA"
    images.rgb(root / "cat" / "good.jpg")
    images.grayscale(root / "cat" / "gray.jpg")
    images.cmyk_jpeg(root / "cat" / "cmyk.jpg")
    images.exif_rotated(root / "cat" / "exif6.jpg")
    images.empty(root / "cat" / "empty.jpg")
    images.text(root / "cat" / "text.jpg")
    images.rgb(root / "cat" / "tiny.png", size=(2, 2))
    images.gray16(root / "dog" / "deep16.png")
    images.palette_transparent(root / "dog" / "palette.png")
    images.rgba(root / "dog" / "rgba.png")
    images.rgb(root / "dog" / "photo.data", fmt="PNG")
    images.truncated_jpeg(root / "dog" / "truncated.jpg")
    images.png_claiming_size(root / "dog" / "bomb.png", 100_000, 100_000)
    images.text(root / "dog" / "notes.txt")  # not a candidate at all
    return root


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


@pytest.mark.parametrize("workers", [1, 4])
def test_validate_messy_folder(messy_folder, workers):
    data = scan(messy_folder)
    filters_before = list(warnings.filters)

    report = validate_samples(data.samples, progress=False, workers=workers)

    assert warnings.filters == filters_before  # PIL's bomb warning was made an error only locally

    assert [_rel(messy_folder, s.path) for s in report.usable] == EXPECTED_USABLE
    assert {_rel(messy_folder, s.path): reason_kind(s.reason) for s in report.skipped} == (
        EXPECTED_SKIPPED
    )
    assert [_rel(messy_folder, s.path) for s in report.skipped] == sorted(EXPECTED_SKIPPED)
    assert {s.label for s in report.skipped} == {"cat", "dog"}
    assert report.conversions == {
        "alpha composited on white": 2,
        "exif_orientation": 1,
        "grayscale->RGB": 1,
        "mode CMYK->RGB": 1,
        "mode I;16->RGB": 1,
        "mode P->RGB": 1,
    }
    assert report.converted_images == 6
    assert report.summary() == (
        "8 usable images, 5 skipped (1 decompression bomb, 1 empty file, 1 not an image, "
        "1 too small, 1 truncated or corrupt), 6 converted"
    )


def test_usable_images_load_as_rgb(messy_folder):
    from vitkit.data.images import load_rgb

    report = validate_samples(scan(messy_folder).samples, progress=False)
    assert {load_rgb(s.path)[0].mode for s in report.usable} == {"RGB"}


def test_validate_missing_file_from_manifest(tmp_path, images):
    images.rgb(tmp_path / "a.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.jpg,cat\nb.jpg,dog\n")

    report = validate_samples(scan(manifest).samples, progress=False)

    assert [s.path.name for s in report.usable] == ["a.jpg"]
    assert report.skipped == [SkippedImage(tmp_path / "b.jpg", "file not found", "dog", None)]


def test_dangling_symlink_is_reported_missing(tmp_path, images):
    images.class_tree(tmp_path, {"cat": 1, "dog": 1})
    (tmp_path / "dog" / "link.jpg").symlink_to(tmp_path / "nowhere.jpg")

    report = validate_samples(scan(tmp_path).samples, progress=False)

    assert [(s.path.name, s.reason) for s in report.skipped] == [("link.jpg", "file not found")]


def test_validate_with_progress_bar(tmp_path, images, capsys):
    images.class_tree(tmp_path, {"a": 2, "b": 2})
    report = validate_samples(scan(tmp_path).samples, progress=True)
    assert len(report.usable) == 4
    assert capsys.readouterr().out == ""  # the bar goes to stderr, never stdout


def test_summary_singular_and_clean():
    sample = Sample(Path("/x.jpg"), "a", None)
    assert ValidationReport([sample], [], {}).summary() == "1 usable image, 0 skipped, 0 converted"


def test_write_skipped_csv(messy_folder, tmp_path):
    report = validate_samples(scan(messy_folder).samples, progress=False)
    out = tmp_path / "run" / "skipped.csv"
    out.parent.mkdir()
    out.write_text("stale content\n")

    write_skipped_csv(report.skipped, out)

    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [list(r) for r in rows] == [["path", "reason"]] * len(rows)
    assert [(Path(r["path"]), r["reason"]) for r in rows] == [
        (s.path, s.reason) for s in report.skipped
    ]
    assert {_rel(messy_folder, Path(r["path"])): reason_kind(r["reason"]) for r in rows} == (
        EXPECTED_SKIPPED
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["skipped.csv"]  # no temp left


def test_write_skipped_csv_empty_has_header(tmp_path):
    out = tmp_path / "new" / "skipped.csv"
    write_skipped_csv([], out)
    assert out.read_text().splitlines() == ["path,reason"]


def _report(*samples: Sample, skipped: tuple[SkippedImage, ...] = ()) -> ValidationReport:
    return ValidationReport(list(samples), list(skipped), {})


def _s(label: str, split: str | None = "train", name: str = "x") -> Sample:
    return Sample(Path(f"/d/{split}/{label}/{name}.jpg"), label, split)


def test_check_usable_passes():
    check_usable(_report(_s("a"), _s("b"), _s("a", "val"), _s("b", "val")))
    check_usable(_report(_s("a", None), _s("b", None)), require_splits=())


def test_check_usable_no_images():
    with pytest.raises(DataError, match="no images found.*DATA/<class>/"):
        check_usable(_report())


def test_check_usable_everything_skipped():
    skipped = (SkippedImage(Path("/d/a/1.jpg"), "not an image", "a"),
               SkippedImage(Path("/d/b/2.jpg"), "not an image", "b"))
    with pytest.raises(DataError, match=r"all 2 files were skipped \(2 not an image\)"):
        check_usable(_report(skipped=skipped))


def test_check_usable_single_class(messy_folder):
    report = validate_samples(scan(messy_folder).samples, progress=False)
    only_cat = ValidationReport([s for s in report.usable if s.label == "cat"], [], {})
    with pytest.raises(DataError) as excinfo:
        check_usable(only_cat, require_splits=())
    message = str(excinfo.value)
    assert "a classifier needs at least two classes; found only 'cat'" in message
    assert "DATA/<class>/" in message


def test_check_usable_single_class_after_skipping():
    skipped = (SkippedImage(Path("/d/dog/1.jpg"), "not an image", "dog", "train"),)
    with pytest.raises(DataError, match="only 'cat' \\(every image of 'dog' was skipped\\)"):
        check_usable(_report(_s("cat"), _s("cat", "val"), skipped=skipped))


def test_check_usable_class_missing_from_val(tmp_path, images):
    images.class_tree(tmp_path / "train", {"cat": 3, "dog": 3})
    images.class_tree(tmp_path / "val", {"cat": 1})
    images.text(tmp_path / "val" / "dog" / "broken.jpg")
    samples = ensure_validation_split(scan(tmp_path))

    report = validate_samples(samples, progress=False)

    with pytest.raises(DataError) as excinfo:
        check_usable(report)
    message = str(excinfo.value)
    assert "class 'dog' in split 'val' (1 skipped)" in message
    assert "'cat'" not in message
    assert "DATA/<split>/<class>/" in message
    check_usable(report, require_splits=("train",))


def test_check_usable_needs_assigned_splits():
    with pytest.raises(ValueError, match="ensure_validation_split"):
        check_usable(_report(_s("a", None), _s("b", None)))
