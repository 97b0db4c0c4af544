"""The HTML reports of `vitkit segment eval` and `vitkit detect eval`: the gallery images
(the few worst and best, predicted again to draw them) and the page, written beside
``eval.json``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from vitkit.data.images import load_rgb
from vitkit.data.masks import read_mask
from vitkit.detect.evaluate import DetectEvaluation
from vitkit.detect.predict import draw_boxes
from vitkit.segment.evaluate import SegmentEvaluation
from vitkit.segment.predict import overlay

GALLERY_SIDE = 320  # images are shrunk to this long side before drawing (thumbnails: 160)
MAX_DRAWN_BOXES = 30  # predictions drawn per image, best first


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_segment_eval_report(out: Path, evaluation: SegmentEvaluation,
                              details: dict[str, Any]) -> Path:
    """``out/report.html`` of a segmentation evaluation; ``details`` is what ``eval.json``
    holds."""
    from vitkit.report.segment import gallery_picks, write_segment_report

    predictor = evaluation.predictor
    n_classes = len(predictor.labels)
    by_path = {str(p.image): p for p in evaluation.pairs}
    worst, best = gallery_picks(evaluation.per_image)
    gallery = []
    for group, rows in (("worst", worst), ("best", best)):
        if not rows:
            continue
        pairs = [by_path[str(row["path"])] for row in rows]
        images = [load_rgb(pair.image)[0] for pair in pairs]
        predictions = predictor.predict(images, [pair.image for pair in pairs])
        for row, pair, image, prediction in zip(rows, pairs, images, predictions, strict=True):
            truth = read_mask(pair, n_classes, image.size).astype("uint8")
            predicted = prediction.mask
            views = {}
            for key, mask in (("prediction_png", predicted), ("truth_png", truth)):
                shown = overlay(image, mask, n_classes)
                shown.thumbnail((GALLERY_SIDE, GALLERY_SIDE), Image.Resampling.NEAREST)
                views[key] = _png(shown)
            gallery.append({**row, "group": group, **views})
    return write_segment_report(out, details, evaluation.per_image, gallery)


def write_detect_eval_report(out: Path, evaluation: DetectEvaluation,
                             details: dict[str, Any]) -> Path:
    """``out/report.html`` of a detection evaluation; ``details`` is what ``eval.json``
    holds."""
    from vitkit.report.detect import TRUTH_COLOUR, gallery_picks, write_detect_report

    detector = evaluation.detector
    by_path = {str(s.image): s for s in evaluation.samples}
    worst, best = gallery_picks(evaluation.per_image)
    gallery = []
    for group, rows in (("worst", worst), ("best", best)):
        if not rows:
            continue
        samples = [by_path[str(row["path"])] for row in rows]
        images = [load_rgb(sample.image)[0] for sample in samples]
        found = detector.predict(images)
        for row, sample, image, all_boxes in zip(rows, samples, images, found, strict=True):
            boxes = all_boxes[:MAX_DRAWN_BOXES]
            scale = min(1.0, GALLERY_SIDE / max(image.size))
            shown = image.convert("RGB")
            if scale < 1.0:
                shown = shown.resize((max(1, round(image.width * scale)),
                                      max(1, round(image.height * scale))))
            draw = ImageDraw.Draw(shown)
            width = max(2, round(min(shown.size) / 100))
            for box in sample.boxes:
                draw.rectangle(tuple(v * scale for v in box), outline=TRUTH_COLOUR, width=width)
            scaled = [{"label": b.label, "score": b.score, "box": [v * scale for v in b.box]}
                      for b in boxes]
            gallery.append({**row, "group": group,
                            "overlay_png": _png(draw_boxes(shown, scaled, detector.labels))})
    skipped = [{"path": str(s.path), "reason": s.reason} for s in evaluation.skipped]
    dropped = [{"path": str(d.path), "where": d.where, "reason": d.reason}
               for d in evaluation.dropped]
    return write_detect_report(out, details, gallery, skipped, dropped)
