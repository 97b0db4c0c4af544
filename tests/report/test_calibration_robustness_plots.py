"""Reliability diagrams and robustness curves render from the JSON the commands write."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.evaluate.calibration import reliability_bins
from vitkit.report.plots import plot_reliability, plot_robustness, render_robustness


def _size(path: Path) -> tuple[int, int]:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return image.size


def test_reliability_one_panel_or_before_and_after(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3) * 0.5, 200)
    labels = rng.integers(0, 3, 200)
    bins = reliability_bins(probs, labels, n_bins=10)
    single = plot_reliability(bins, tmp_path / "one.png")
    both = plot_reliability(bins.to_dict(), tmp_path / "two.png", after=bins, temperature=1.5)
    assert _size(both)[0] > 1.7 * _size(single)[0]  # a second panel
    with pytest.raises(ValueError, match="edges"):
        plot_reliability({"counts": [1]}, tmp_path / "bad.png")


def test_robustness_panels_from_the_json_document(tmp_path: Path) -> None:
    result = {
        "clean_accuracy": 0.9,
        "corruptions": [{"name": "noise", "severity": s, "accuracy": a, "drop": 0.9 - a}
                        for s, a in ((0.05, 0.85), (0.1, 0.7))]
                       + [{"name": "jpeg", "severity": q, "accuracy": a, "drop": 0.9 - a}
                          for q, a in ((75, 0.88), (10, 0.6))],
        "adversarial": [{"attack": k, "epsilon": e, "accuracy": a, "drop": 0.9 - a,
                         "transferred": True}
                        for k, e, a in (("fgsm", 1, 0.5), ("pgd", 1, 0.3), ("fgsm", 4, 0.1))],
    }
    path = plot_robustness(result, tmp_path / "robustness.png")
    width, height = _size(path)
    assert width > height  # three panels in a row
    with pytest.raises(ValueError, match="no corruption or attack"):
        render_robustness({"clean_accuracy": 0.9, "corruptions": [], "adversarial": []})


def test_the_reliability_title_shows_the_ece_evaluate_computes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ECE is computed in one place (evaluate.calibration.ReliabilityBins.ece); the plot's
    title shows that value, from the bins object or from its JSON form."""
    from vitkit.evaluate.calibration import ReliabilityBins

    rng = np.random.default_rng(1)
    bins = reliability_bins(rng.dirichlet(np.ones(3), 100), rng.integers(0, 3, 100), n_bins=10)
    assert f"ECE {bins.ece:.3f} " in _panel_title(bins.to_dict())
    monkeypatch.setattr(ReliabilityBins, "ece", property(lambda self: 0.4321))
    assert "ECE 0.432 " in _panel_title(bins.to_dict())


def _panel_title(bins: dict) -> str:
    from matplotlib.figure import Figure

    from vitkit.report.plots import _reliability_panel

    ax = Figure().subplots()
    _reliability_panel(ax, bins, "t")
    return ax.get_title(loc="left")
