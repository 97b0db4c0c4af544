"""`vitkit anomaly score`: scores images with a bundle, optionally writing heat-map overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitkit.anomaly.detector import AnomalyScore, load_anomaly_detector
from vitkit.anomaly.overlay import heatmap_overlay, save_png_atomic
from vitkit.console import make_progress
from vitkit.data.files import find_images, require_images, why_unmatched
from vitkit.errors import ImageFailure


def run_score(bundle: Path, inputs: Sequence[str], maps_dir: Path | None = None,
              batch_size: int = 16, device: str = "auto", progress: bool = True,
              variant: str | None = None) -> list[AnomalyScore | ImageFailure]:
    """Scores images; with ``maps_dir`` also writes one heat-map overlay PNG per image.
    ``variant`` runs an exported feature extractor (`vitkit anomaly export`)."""
    files, unmatched = find_images(inputs)
    require_images(files, unmatched)  # before the detector loads
    detector = load_anomaly_detector(bundle, device, variant=variant)
    results: list[AnomalyScore | ImageFailure] = [
        ImageFailure(item, why_unmatched(item)) for item in unmatched]
    names = _unique_names(files)
    with make_progress(progress and len(files) > batch_size) as bar:
        task = bar.add_task("Scoring", total=len(files), stats="") if bar else None
        for result, image in detector.score_paths(files, batch_size, with_maps=maps_dir is not None,
                                                  keep_images=maps_dir is not None):
            if maps_dir is not None and isinstance(result, AnomalyScore) and image is not None:
                assert result.map is not None
                overlay = heatmap_overlay(image, result.map, 0.0, 1.0, threshold=0.5)
                save_png_atomic(overlay, maps_dir / names[Path(result.path)])
                result.map = None
            results.append(result)
            if bar is not None and task is not None:
                bar.advance(task)
    return results


def _unique_names(paths: Sequence[Path]) -> dict[Path, str]:
    """``stem.png`` per image, prefixed with parent folders only where stems collide."""
    names: dict[Path, str] = {}
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    for path in paths:
        if counts[path.stem] == 1:
            names[path] = f"{path.stem}.png"
        else:
            names[path] = f"{path.parent.name}_{path.stem}.png"
    seen: set[str] = set()
    for path, name in names.items():
        candidate, i = name, 1
        while candidate in seen:
            candidate = f"{Path(name).stem}_{i}.png"
            i += 1
        seen.add(candidate)
        names[path] = candidate
    return names
