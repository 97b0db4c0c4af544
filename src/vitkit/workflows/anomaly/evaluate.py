"""`vitkit anomaly eval`: scores an MVTec-style test set, measures image and pixel metrics,
writes eval.json and the HTML report."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitkit.anomaly.detector import AnomalyDetector, AnomalyScore, load_anomaly_detector
from vitkit.anomaly.metrics import evaluate_anomaly
from vitkit.anomaly.overlay import heatmap_overlay
from vitkit.anomaly.threshold import ScoreScale, f1_optimal_threshold
from vitkit.bundle import update_meta, write_json_atomic
from vitkit.console import make_progress
from vitkit.data.mvtec import GOOD, TestImage, mvtec_test_images, read_mask
from vitkit.errors import DataError, ImageFailure


def run_eval(bundle: Path, data_root: Path, out: Path | None = None, threshold: str = "stored",
             batch_size: int = 16, device: str = "auto", max_map_side: int = 512,
             report: bool = True, progress: bool = True, variant: str | None = None
             ) -> dict[str, Any]:
    """Scores an MVTec-style test set and measures image and pixel metrics.

    Args:
        bundle: The anomaly bundle.
        data_root: MVTec-style root (see :func:`mvtec_test_images`).
        out: Folder for eval.json, overlays and report.html (default BUNDLE/eval).
        threshold: ``stored`` keeps the bundle's threshold; ``f1`` sets the F1-optimal
            threshold on this data and stores it in the bundle.
        max_map_side: Pixel metrics are computed on maps and masks resized to this long side.
        report: Write overlays and the HTML report.
        variant: An exported feature extractor to score with (`vitkit anomaly export`).
    """
    detector = load_anomaly_detector(bundle, device, variant=variant)
    tests = mvtec_test_images(data_root)
    by_path = {t.path: t for t in tests}
    scored: list[tuple[TestImage, AnomalyScore]] = []
    skipped: list[ImageFailure] = []
    with make_progress(progress) as bar:
        task = bar.add_task("Scoring test images", total=len(tests), stats="") if bar else None
        for result, image in _score_for_eval(detector, [t.path for t in tests], batch_size,
                                             max_map_side):
            if isinstance(result, ImageFailure):
                skipped.append(result)
            else:
                scored.append((by_path[Path(result.path)], result))
            if bar is not None and task is not None:
                bar.advance(task)
            del image
    if not any(t.defect == GOOD for t, _ in scored) or all(t.defect == GOOD for t, _ in scored):
        raise DataError(f"{data_root}: need readable normal and anomalous test images to "
                        f"evaluate ({len(skipped)} were unreadable).")
    raw = np.array([r.raw_score for _, r in scored])
    defects = [t.defect for t, _ in scored]
    if threshold == "f1":
        labels = np.array([d != GOOD for d in defects])
        new_threshold, _ = f1_optimal_threshold(raw, labels)
        _adopt_threshold(bundle, detector, new_threshold, f"F1-optimal on {data_root}")
    has_masks = any(t.mask is not None for t, _ in scored)
    maps: list[np.ndarray] | None = None
    masks: list[np.ndarray | None] | None = None
    if has_masks:
        maps, masks = [], []
        for test_image, score in scored:
            if score.map is None:  # _score_for_eval asks for maps: a bug if one is missing
                raise RuntimeError(f"{test_image.path} was scored without a map")
            maps.append(score.map)
            masks.append(read_mask(test_image, score.map.shape))
    evaluation = evaluate_anomaly(raw, defects, detector.threshold, maps=maps, masks=masks)
    metrics = evaluation.to_dict()
    out = Path(out) if out is not None else Path(bundle) / "eval"
    details = {**metrics, "data": str(data_root), "n_skipped": len(skipped),
               "skipped": [s.to_dict() for s in skipped],
               "threshold_source": detector.record.get("threshold_source"),
               "fitted_with": _fitted_with(detector.record)}
    write_json_atomic(out / "eval.json", details)
    if report:
        from vitkit.report.anomaly import write_anomaly_report  # matplotlib: only when asked

        entries = [(t, r) for t, r in scored]
        write_anomaly_report(out, details, _report_entries(detector, entries, max_map_side))
    return metrics


def _fitted_with(record: dict[str, Any]) -> dict[str, Any]:
    """The settings the bundle was fitted with, and --auto's candidates when it chose them."""
    config = record.get("config") or {}
    keys = ("method", "model", "image_size", "layers", "global_stats", "image_score",
            "coreset_ratio", "folds", "augment")
    fitted = {key: config[key] for key in keys if key in config}
    if "auto" in record:
        fitted["auto"] = record["auto"]
    return fitted


def _score_for_eval(detector: AnomalyDetector, paths: Sequence[Path], batch_size: int,
                    max_map_side: int
                    ) -> Iterator[tuple[AnomalyScore | ImageFailure, Image.Image | None]]:
    """``score_paths`` with maps capped at ``max_map_side`` to bound memory and in raw score
    units: the normalised maps saturate at 1, and ties there would understate pixel AUROC and
    PRO (and make them depend on the hold-out set that set the scale)."""
    return detector.score_paths(paths, batch_size, with_maps=True, max_map_side=max_map_side,
                                normalized_maps=False)


def _adopt_threshold(bundle: Path, detector: AnomalyDetector, threshold: float,
                     source: str) -> None:
    low = detector.scale.low
    detector.threshold = threshold
    detector.scale = ScoreScale(low=min(low, threshold), threshold=threshold,
                                high=threshold + max(threshold - low, 1e-12))
    record = {**detector.record, "threshold": threshold, "scale": detector.scale.to_dict(),
              "threshold_source": source}
    detector.record = record
    update_meta(bundle, anomaly=record)


def _report_entries(detector: AnomalyDetector, scored: Sequence[tuple[TestImage, AnomalyScore]],
                    max_side: int) -> list[dict[str, Any]]:
    """Report rows, worst first, each with an overlay PNG of the normalised map (the verdicts
    carry raw maps, see ``_score_for_eval``)."""
    from vitkit.anomaly.overlay import png_bytes
    from vitkit.data import load_rgb

    rows = []
    for test, verdict in sorted(scored, key=lambda item: -item[1].raw_score):
        image, _ = load_rgb(test.path)
        image.thumbnail((max_side, max_side))
        assert verdict.map is not None
        overlay = heatmap_overlay(image, detector.scale.normalize(verdict.map), 0.0, 1.0,
                                  threshold=0.5)
        overlay.thumbnail((256, 256))
        rows.append({"path": str(test.path), "defect": test.defect, "score": verdict.score,
                     "raw_score": verdict.raw_score, "label": verdict.label,
                     "overlay_png": png_bytes(overlay)})
    return rows
