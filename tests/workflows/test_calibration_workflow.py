"""Temperature scaling into a bundle: the trust step after training and `run_calibrate`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import make_image_folder
from tests.workflows.bundles import sharpened

from vitkit.bundle import read_meta
from vitkit.classify.config import TrainConfig
from vitkit.errors import VitkitError
from vitkit.evaluate.calibration import softmax
from vitkit.predictor.embed import Embeddings
from vitkit.predictor.predict import load
from vitkit.workflows.calibration import calibration_step, run_calibrate
from vitkit.workflows.evaluate import run_eval
from vitkit.workflows.trust import TrustContext, trust_steps


def _overconfident(n: int, factor: float = 3.0, seed: int = 0) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
    """3-class logits calibrated by construction (labels drawn from their softmax), x factor."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, 3))
    labels = np.minimum((rng.random((n, 1)) > softmax(logits).cumsum(1)).sum(1), 2)
    return torch.tensor(factor * logits, dtype=torch.float32), torch.tensor(labels)


def _context(bundle: Path, run_dir: Path, logits: torch.Tensor, targets: torch.Tensor
             ) -> TrustContext:
    context = TrustContext(bundle, run_dir, TrainConfig(), {"val": []}, progress=False)
    context._embeddings["val"] = Embeddings(torch.zeros(len(targets), 4), logits,
                                            [f"{i}.png" for i in range(len(targets))], targets)
    return context


def test_trust_step_fits_stores_and_draws(fresh_bundle: Callable[[str], Path],
                                          tmp_path: Path) -> None:
    bundle = fresh_bundle("cnn")
    context = _context(bundle, tmp_path, *_overconfident(4000))
    assert context.predictor.temperature == 1.0  # loaded before: the step must reload it
    calibration_step(context)
    record = read_meta(bundle).model_extra["calibration"]  # type: ignore[index]
    assert record["temperature"] == pytest.approx(3.0, rel=0.08)
    assert record["ece_after"] < record["ece_before"]
    assert record["nll_after"] < record["nll_before"]
    assert (record["fitted_on"], record["n"]) == ("val", 4000)
    document = json.loads((tmp_path / "calibration.json").read_text())
    assert document["temperature"] == record["temperature"]
    assert sum(document["reliability"]["after"]["counts"]) == 4000
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert context.predictor.temperature == record["temperature"]


def test_too_few_images_leave_the_bundle_alone(fresh_bundle: Callable[[str], Path],
                                               tmp_path: Path) -> None:
    bundle = fresh_bundle("cnn")
    with pytest.raises(VitkitError, match="at least 20"):
        calibration_step(_context(bundle, tmp_path, *_overconfident(12)))
    assert "calibration" not in (read_meta(bundle).model_extra or {})
    assert not (tmp_path / "calibration.json").exists()


def test_the_step_runs_only_when_asked() -> None:
    names = [name for name, _ in trust_steps(TrainConfig())]
    assert "calibration" in names
    if "ood" in names:  # fitted first: both read the same validation features
        assert names.index("ood") < names.index("calibration")
    off = TrainConfig.model_validate({"trust": {"calibrate": False}})
    assert "calibration" not in [name for name, _ in trust_steps(off)]


def test_run_calibrate_then_eval_reports_the_calibrated_ece(
        fresh_bundle: Callable[[str], Path], tmp_path: Path) -> None:
    bundle = sharpened(fresh_bundle("cnn"), 1000.0)
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=4, seed=1)
    make_image_folder(data / "val", per_class=10, seed=2)
    out = tmp_path / "out"
    result = run_calibrate(bundle, str(data), out=out, progress=False)
    assert result["n"] == 30
    assert 0.05 < result["temperature"] < 20
    assert result["nll_after"] <= result["nll_before"]
    assert result["files"] == [str(out / "calibration.json"), str(out / "reliability.png")]
    evaluated = run_eval(bundle, str(data), progress=False)
    assert evaluated["split"] == "val"
    assert evaluated["temperature"] == result["temperature"]
    assert evaluated["ece"] == pytest.approx(result["ece_after"], abs=1e-6)
    assert evaluated["accuracy"] == pytest.approx(result["accuracy"])
    assert evaluated["nll"] == pytest.approx(result["nll_after"], abs=1e-5)
    assert load(bundle).temperature == result["temperature"]
