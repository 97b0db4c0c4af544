"""Test-time augmentation views, averaged probabilities and their cost; the temperature a
bundle stores changes the reported probabilities, never the logits or the predicted class."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vitkit.bundle import update_meta
from vitkit.errors import ConfigError
from vitkit.predictor.predict import Prediction, load
from vitkit.predictor.tta import TTA_VIEWS, TtaTiming, check_tta, views, zoom


def _batch(size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn((3, 3, size, size), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("mode", "count"), [("none", 1), ("flip", 2), ("flip-scale", 4)])
def test_views_count_shape_and_the_first_is_the_batch_itself(mode: str, count: int) -> None:
    batch = _batch()
    made = list(views(batch, mode))
    assert len(made) == count == len(TTA_VIEWS[mode])
    assert made[0] is batch
    assert all(v.shape == batch.shape for v in made)
    if count > 1:
        assert torch.equal(made[1], batch.flip(-1))


def test_zoom_in_enlarges_the_centre_and_zoom_out_keeps_it_whole() -> None:
    batch = torch.zeros(1, 1, 64, 64)
    batch[..., 24:40, 24:40] = 1.0  # a 16 px square in the middle
    zoomed_in, zoomed_out = zoom(batch, 1.125), zoom(batch, 0.875)
    assert zoomed_in.shape == zoomed_out.shape == batch.shape
    assert float(zoomed_in.sum()) == pytest.approx(16 * 16 * 1.125**2, rel=0.05)
    assert float(zoomed_out.sum()) == pytest.approx(16 * 16 * 0.875**2, rel=0.05)
    assert torch.equal(zoom(batch, 1.0), batch)


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="flip-scale"):
        check_tta("rotate")


def test_flip_on_a_mirror_symmetric_image_equals_plain(trained_bundles: dict[str, Path]
                                                       ) -> None:
    predictor = load(trained_bundles["cnn"])
    x = _batch()
    symmetric = (x + x.flip(-1)) / 2
    plain = predictor.predict_proba(symmetric)
    predictor.tta = "flip"
    torch.testing.assert_close(predictor.predict_proba(symmetric), plain)
    # On an ordinary image it is the mean of the image's and its mirror's probabilities.
    predictor.tta = "none"
    expected = (predictor.predict_proba(x) + predictor.predict_proba(x.flip(-1))) / 2
    predictor.tta = "flip"
    torch.testing.assert_close(predictor.predict_proba(x), expected)


def test_timing_counts_images_and_views_cost_more(trained_bundles: dict[str, Path]) -> None:
    predictor = load(trained_bundles["vit"], tta="flip-scale")
    timing = TtaTiming(views=4)
    for seed in range(3):
        probs = predictor.predict_proba(_batch(seed=seed), timing)
        torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert timing.images == 9
    assert timing.warmed_up
    assert timing.total_seconds > timing.plain_seconds > 0
    assert timing.slowdown > 1.0
    assert set(timing.to_dict()) >= {"views", "seconds_per_image", "slowdown"}


def test_a_stored_temperature_changes_scores_not_labels_or_logits(
        fresh_bundle: Callable[[str], Path], tiny_image_folder: Path) -> None:
    bundle = fresh_bundle("cnn")
    paths = sorted(tiny_image_folder.glob("*/*.png"))[::6]
    before = load(bundle)
    assert before.temperature == 1.0
    plain = [p for p in before.predict_paths(paths) if isinstance(p, Prediction)]
    update_meta(bundle, calibration={"temperature": 2.0, "fitted_on": "val", "n": 30})
    after = load(bundle)
    assert after.temperature == 2.0
    scaled = [p for p in after.predict_paths(paths) if isinstance(p, Prediction)]
    assert [p.label for p in scaled] == [p.label for p in plain]
    assert all(s.score < p.score for s, p in zip(scaled, plain, strict=True))
    x = _batch()
    torch.testing.assert_close(after(x), before(x))  # logits stay raw
    torch.testing.assert_close(after.probabilities(after(x)), (before(x) / 2).softmax(1))
