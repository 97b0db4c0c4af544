"""Terminal output helpers: paths cut from the left, plain-words metrics, the exit contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitkit.cli.common import finish_items, plural, short_path
from vitkit.errors import NothingProcessedError
from vitkit.evaluate.words import describe_accuracy


def test_short_path_keeps_the_file_name(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    long = "/usr/lib/python3.11/site-packages/conformal_clip_data/data/textile/local/t_0001.jpg"
    cut = short_path(long, 30)
    assert len(cut) <= 30 and cut.startswith("…") and cut.endswith("local/t_0001.jpg")
    assert short_path(tmp_path / "a" / "b.png", 30) == "a/b.png", "relative to the cwd"
    assert short_path("x.png", 30) == "x.png"


def test_finish_items_exit_contract(capsys) -> None:
    with pytest.raises(NothingProcessedError, match="nope.jpg: no such file"):
        finish_items("classified", 0, [("nope.jpg", "no such file or folder")])
    finish_items("classified", 3, [("bad.png", "not an image")])
    assert "3 classified, 1 failed" in capsys.readouterr().err
    assert NothingProcessedError("x").exit_code == 2


def test_plural() -> None:
    assert (plural(1, "epoch"), plural(3, "epoch")) == ("1 epoch", "3 epochs")


def test_describe_accuracy_reads_the_numbers_out() -> None:
    metrics = {
        "n": 400, "accuracy": 0.9625, "labels": ["global", "local", "nominal"],
        "per_class": {"global": {"recall": 1.0, "support": 100},
                      "local": {"recall": 0.9, "support": 100},
                      "nominal": {"recall": 0.975, "support": 200}},
        "confusion_matrix": [[100, 0, 0], [0, 90, 10], [0, 5, 195]],
    }
    text = describe_accuracy(metrics)
    assert text.startswith("Of 400 test images, 385 (96.2%) got the right class.")
    assert "global 100%, local 90%, nominal 98%" in text
    assert text.endswith("Weakest: local — 10 of 100 were called something else, mostly "
                         "nominal (10).")
    perfect = {**metrics, "accuracy": 1.0, "per_class": {
        k: {**v, "recall": 1.0} for k, v in metrics["per_class"].items()}}
    assert describe_accuracy(perfect).endswith("Every class was recognised every time.")
