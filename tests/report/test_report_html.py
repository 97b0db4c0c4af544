"""Tests for vitkit.report.write_report on fake run directories."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from vitkit.errors import VitkitError
from vitkit.report import plot_learning_curves, write_report

if TYPE_CHECKING:
    from conftest import FakeRun

ALL_INPUTS = [
    "summary.json",
    "eval.json",
    "metrics.csv",
    "predictions.json",
    "skipped.csv",
]


def element_text(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', page)
    assert match, f"no element with id={element_id!r}"
    return match.group(1)


def img_src(page: str, element_id: str) -> str:
    match = re.search(rf'<img id="{element_id}"[^>]* src="([^"]+)"', page)
    assert match, f"no <img id={element_id!r}>"
    return match.group(1)


def decode_data_uri(uri: str, mime: str) -> Image.Image:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))
    image.load()
    return image


def test_full_report(fake_run: FakeRun) -> None:
    out = write_report(fake_run.run_dir)
    assert out == fake_run.run_dir / "report.html"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert element_text(page, "metric-accuracy") == fake_run.accuracy_text
    assert fake_run.accuracy_text == "70.0%"
    assert element_text(page, "metric-balanced-accuracy") == "69.4%"  # (2/3 + 2/3 + 3/4) / 3
    assert element_text(page, "metric-top-2") == "90.0%"
    assert 'id="missing-inputs"' not in page
    # Known summary fields are shown, formatted.
    assert "vit_small_patch16_224" in page
    assert "1,234" in page and "12 min 34 s" in page and "2024-05-01 14:03 UTC" in page
    # The learning curves and confusion matrix were drawn from the data and embedded.
    assert decode_data_uri(img_src(page, "learning-curves"), "image/png").width > 500
    assert decode_data_uri(img_src(page, "confusion-matrix"), "image/png").width > 300
    # Epoch table: 5 rows, best epoch (4, from summary.json) highlighted, '' shown as a dash.
    epochs = page[page.index('id="epochs"') :]
    epochs = epochs[: epochs.index("</table>")]
    assert epochs.count("<tr") == 6
    assert '<tr class="best"><td>4</td>' in epochs
    assert "—" in epochs
    # Skipped files table, escaped.
    assert 'id="skipped"' in page and "cannot identify image file" in page
    assert "data/dog/&lt;tiny&gt;.png" in page


def test_predictions_grid(fake_run: FakeRun) -> None:
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    grid = page[page.index('id="predictions"') :]
    grid = grid[: grid.index("</section>")]
    classes = re.findall(r'<figure class="prediction (\w+)"', grid)
    assert len(classes) == fake_run.n_predictions
    # Wrong ones first, the most confident mistake leading.
    assert classes == ["wrong"] * fake_run.n_wrong + ["correct"] * (
        fake_run.n_predictions - fake_run.n_wrong
    )
    first = grid[: grid.index("</figure>")]
    assert "evil_2.jpg" in first  # score 0.72 beats 0.61 and 0.55
    thumbs = re.findall(r'<img src="(data:image/jpeg;base64,[^"]+)"', grid)
    assert len(thumbs) == fake_run.n_readable_images
    for uri in thumbs:
        image = decode_data_uri(uri, "image/jpeg")
        assert image.mode == "RGB" and max(image.size) <= 160
    # The missing file and the corrupt file get placeholders instead of crashing.
    assert grid.count('class="placeholder"') == 2
    assert ">image not found<" in grid and ">image unreadable<" in grid


def test_labels_are_escaped(fake_run: FakeRun) -> None:
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert fake_run.evil_label not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_out_elsewhere_leaves_run_dir_untouched(fake_run: FakeRun, tmp_path: Path) -> None:
    before = sorted(p.name for p in fake_run.run_dir.iterdir())
    out = write_report(fake_run.run_dir, tmp_path / "elsewhere" / "page.html")
    assert out == tmp_path / "elsewhere" / "page.html" and out.is_file()
    assert sorted(p.name for p in fake_run.run_dir.iterdir()) == before
    # Written atomically: no temporary file left next to the report.
    assert [p.name for p in out.parent.iterdir()] == ["page.html"]


def test_existing_plots_are_embedded_as_is(fake_run: FakeRun) -> None:
    rows = [{"epoch": 1, "stage": "only", "train_loss": 1.0, "val_acc": 0.3}]
    png = plot_learning_curves(rows, fake_run.run_dir / "learning_curves.png").read_bytes()
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert img_src(page, "learning-curves") == (
        "data:image/png;base64," + base64.b64encode(png).decode()
    )


def test_corrupt_png_is_reported_and_redrawn(fake_run: FakeRun) -> None:
    (fake_run.run_dir / "confusion_matrix.png").write_bytes(b"\x89PNG truncated")
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert "confusion_matrix.png</code> is not a valid PNG image" in page
    decode_data_uri(img_src(page, "confusion-matrix"), "image/png")


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(VitkitError, match="not a training run folder"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_a_run_with_only_its_config_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: x\n")  # interrupted before the first epoch
    page = write_report(tmp_path).read_text(encoding="utf-8")
    notice = page[page.index('id="missing-inputs"') :]
    notice = notice[: notice.index("</aside>")]
    for name in ALL_INPUTS:
        assert f"<code>{name}</code> not found" in notice
    assert element_text(page, "metric-accuracy") == "—"
    assert 'id="learning-curves"' not in page and 'id="confusion-matrix"' not in page
    assert "No list of skipped files" in element_text(page, "skipped")


def test_the_test_split_is_shown_in_plain_words(fake_run: FakeRun) -> None:
    evaluation = json.loads((fake_run.run_dir / "eval.json").read_text())
    (fake_run.run_dir / "test_eval.json").write_text(json.dumps({**evaluation,
                                                                 "split": "test"}))
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert element_text(page, "metric-test-accuracy") == "70.0%"
    assert 'id="test-evaluation"' in page and 'id="test-per-class"' in page
    words = element_text(page, "test-in-words")
    assert words.startswith(f"Of {evaluation['n']} test images, ")
    assert "got the right class" in words


@pytest.mark.parametrize("missing", ALL_INPUTS)
def test_renders_with_any_one_input_missing(fake_run: FakeRun, missing: str) -> None:
    (fake_run.run_dir / missing).unlink()
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert f"<code>{missing}</code> not found" in page
    assert page.rstrip().endswith("</html>")


@pytest.mark.parametrize("kept", ALL_INPUTS)
def test_renders_with_only_one_input(fake_run: FakeRun, kept: str) -> None:
    for name in ALL_INPUTS:
        if name != kept:
            (fake_run.run_dir / name).unlink()
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert f"<code>{kept}</code> not found" not in page
    assert page.rstrip().endswith("</html>")
    if kept in ("summary.json", "eval.json"):
        assert element_text(page, "metric-accuracy") == "70.0%"
    if kept == "metrics.csv":
        assert 'id="learning-curves"' in page
    if kept == "eval.json":
        assert 'id="confusion-matrix"' in page and 'id="per-class"' in page


def test_accuracy_falls_back_to_summary(fake_run: FakeRun) -> None:
    (fake_run.run_dir / "eval.json").unlink()
    summary = json.loads((fake_run.run_dir / "summary.json").read_text())
    summary["val_accuracy"] = 0.9544
    (fake_run.run_dir / "summary.json").write_text(json.dumps(summary))
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert element_text(page, "metric-accuracy") == "95.4%"


def test_malformed_inputs_are_reported_not_fatal(fake_run: FakeRun) -> None:
    (fake_run.run_dir / "eval.json").write_text("{not json")
    (fake_run.run_dir / "predictions.json").write_text('{"a": 1}')
    (fake_run.run_dir / "metrics.csv").write_text("epoch,stage\n1,head\n")
    (fake_run.run_dir / "summary.json").write_bytes(b"\xff\xfe garbage")
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert "<code>eval.json</code> could not be read" in page
    assert "<code>predictions.json</code> should hold a list, got dict" in page
    assert "<code>summary.json</code> could not be read" in page
    assert "No learning curves: metrics rows hold no loss or accuracy values" in page
    assert element_text(page, "metric-accuracy") == "—"


def test_malformed_prediction_entries_are_skipped(fake_run: FakeRun) -> None:
    path = fake_run.run_dir / "predictions.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps([*entries, {"path": "x.jpg"}, "nonsense", None]))
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert page.count('<figure class="prediction') == fake_run.n_predictions
    assert "3 malformed entries ignored" in page


def test_max_predictions_keeps_wrong_ones(fake_run: FakeRun) -> None:
    page = write_report(fake_run.run_dir, max_predictions=2).read_text(encoding="utf-8")
    assert re.findall(r'<figure class="prediction (\w+)"', page) == ["wrong", "wrong"]
    assert "Showing 2, wrong ones first" in page
    with pytest.raises(ValueError, match="max_predictions"):
        write_report(fake_run.run_dir, max_predictions=-1)


def test_no_skipped_files(fake_run: FakeRun) -> None:
    (fake_run.run_dir / "skipped.csv").write_text("path,reason\n")
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert element_text(page, "skipped") == "No files were skipped."


def test_no_skipped_csv_but_summary_says_zero(fake_run: FakeRun) -> None:
    (fake_run.run_dir / "skipped.csv").unlink()
    summary = json.loads((fake_run.run_dir / "summary.json").read_text())
    (fake_run.run_dir / "summary.json").write_text(json.dumps({**summary, "skipped": 0}))
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert element_text(page, "skipped") == "No files were skipped."


def test_overwrites_previous_report(fake_run: FakeRun) -> None:
    out = fake_run.run_dir / "report.html"
    out.write_text("old")
    write_report(fake_run.run_dir)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_missing_run_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(VitkitError, match="does not exist"):
        write_report(tmp_path / "nope")
