"""Temperature scaling of a bundle: fitted on labelled validation images, stored in
``vitkit.json`` under ``calibration``, and applied by every :class:`Predictor` to the
probabilities it reports (logits stay raw).

Files in the run folder: ``calibration.json`` (the bundle record plus accuracy, ``n_bins`` and
the reliability bins before and after) and ``reliability.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitkit.bundle import Bundle, BundleSource, update_meta, write_json_atomic
from vitkit.compress.reference import reference_images
from vitkit.console import stderr_console
from vitkit.data import validate_samples
from vitkit.errors import DataError, VitkitError
from vitkit.evaluate.calibration import TemperatureFit, temperature_scaling
from vitkit.predictor.embed import embed_samples
from vitkit.predictor.predict import load
from vitkit.predictor.variants import REFERENCE_VARIANT
from vitkit.report.plots import plot_reliability
from vitkit.workflows.run_folder import refresh_report, run_folder_of
from vitkit.workflows.trust_context import TrustContext

CALIBRATION_JSON = "calibration.json"
RELIABILITY_PNG = "reliability.png"
# Fewer images than this give a temperature that is mostly noise.
MIN_IMAGES = 20
N_BINS = 15


def fit_bundle_temperature(bundle: Path, logits: torch.Tensor, targets: torch.Tensor,
                           run_dir: Path | None = None, fitted_on: str = "val"
                           ) -> dict[str, Any]:
    """Fits a temperature on raw ``logits`` (N, C) and true ``targets`` (N,), stores it in the
    bundle and, with ``run_dir``, writes ``calibration.json`` and ``reliability.png`` there.

    Returns:
        The ``calibration.json`` document.

    Raises:
        VitkitError: Too few images, or every prediction is right (or wrong) with such margins
            that no finite temperature is best; the bundle is left as it was.
    """
    n = len(targets)
    if n < MIN_IMAGES:
        raise VitkitError(f"only {n} labelled images to fit a temperature on; temperature "
                          f"scaling needs at least {MIN_IMAGES} (a few hundred is better). "
                          "Give more validation images, e.g. `vitkit calibrate BUNDLE DATA`.")
    fit = temperature_scaling(logits.double().numpy(), targets.numpy(), N_BINS)
    if fit.at_bound:
        raise VitkitError(
            f"the best temperature for these {n} images lies at the edge of the range searched "
            f"(T = {fit.temperature:.3g}; accuracy {fit.accuracy:.3f}): either every "
            "prediction is right, so sharper always looks better, or the logits are nearly "
            "flat or nearly random. Such a temperature would not hold on new images, so the "
            "bundle keeps its own probabilities; calibrate on more (or more varied) images, "
            "or train longer.")
    update_meta(bundle, calibration=fit.record(fitted_on))
    document = calibration_document(fit, fitted_on)
    if run_dir is not None:
        write_json_atomic(run_dir / CALIBRATION_JSON, document)
        plot_reliability(fit.before, run_dir / RELIABILITY_PNG, fit.after, fit.temperature)
    return document


def calibration_document(fit: TemperatureFit, fitted_on: str) -> dict[str, Any]:
    """``calibration.json``: the bundle record, accuracy, and the reliability bins."""
    return {**fit.record(fitted_on), "accuracy": fit.accuracy, "n_bins": N_BINS,
            "reliability": {"before": fit.before.to_dict(), "after": fit.after.to_dict()}}


def calibration_step(context: TrustContext) -> None:
    """Trust step: temperature scaling on the validation logits, into bundle and run folder."""
    embeddings = context.embeddings("val")
    if embeddings.targets is None:
        raise VitkitError("the validation images have no labels to calibrate on.")
    fit_bundle_temperature(context.bundle, embeddings.logits, embeddings.targets,
                           context.run_dir)
    context.reload()


def run_calibrate(bundle: BundleSource, data: str | None = None, out: Path | None = None,
                  batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """`vitkit calibrate`: (re)fits the bundle's temperature on the validation images of
    ``data`` (default: the bundle's own training data, split as training split it).

    Files go to ``out``, else to the bundle's run folder when it sits in one (the run's
    report is re-rendered); the document gains ``bundle``, ``data`` and ``files``.
    """
    opened = Bundle.open(bundle)
    bundle = opened.path
    reference = reference_images(opened.meta, data, "val")
    if reference is None:
        raise DataError(f"{bundle} does not say where its training images are (or they "
                        "moved); give labelled images: vitkit calibrate BUNDLE DATA.")
    predictor = load(opened, variant=REFERENCE_VARIANT)
    checked = validate_samples(reference.samples, progress=progress,
                               intensity=predictor.intensity)
    if checked.skipped:
        stderr_console.print(f"[yellow]{checked.summary()}[/]")
    embeddings = embed_samples(predictor, checked.usable, batch_size, 0, progress,
                               "logits (val)")
    assert embeddings.targets is not None  # embed_samples labels what it embeds
    run_dir = out or run_folder_of(bundle)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    document = fit_bundle_temperature(bundle, embeddings.logits, embeddings.targets, run_dir)
    files = [] if run_dir is None else [str(run_dir / CALIBRATION_JSON),
                                        str(run_dir / RELIABILITY_PNG)]
    if run_dir is not None and refresh_report(run_dir) is not None:
        files.append(str(run_dir / "report.html"))
    return {**document, "bundle": str(bundle), "data": reference.source, "files": files}
