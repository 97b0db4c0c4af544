"""`vitkit detect eval` and `vitkit detect predict`: a detection bundle on annotated data
(mAP, per-class AP, PR curves) and on plain images (boxes and overlays)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitkit.atomic import write_bytes_atomic
from vitkit.bundle import Bundle, write_json_atomic
from vitkit.console import make_progress
from vitkit.data.files import find_images, require_images, why_unmatched
from vitkit.data.images import ImageProblem, load_rgb
from vitkit.detect.evaluate import evaluate_in_detail
from vitkit.detect.predict import ImageDetections, draw_boxes, load_detector
from vitkit.errors import ImageFailure

EVAL_FILE = "eval.json"
BOXES_FILE = "boxes.json"
OVERLAY_SUFFIX = "_boxes.png"


def run_detect_eval(bundle: Path | str, data: str, split: str = "auto",
                    variant: str | None = None, out: Path | None = None, batch_size: int = 8,
                    device: str = "auto", progress: bool = True, report: bool = True
                    ) -> dict[str, Any]:
    """The eval record (see :func:`vitkit.detect.evaluate.evaluate_bundle`), also written to
    ``out/eval.json`` (default ``BUNDLE/eval/``) with the PR curves the report draws, and,
    with ``report``, ``out/report.html``."""
    opened = Bundle.open(bundle)
    evaluation = evaluate_in_detail(opened, data, split=split, variant=variant,
                                    batch_size=batch_size, device=device, progress=progress)
    record = evaluation.record
    target = Path(out) if out is not None else opened.path / "eval"
    target.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target / EVAL_FILE, record)
    if report:
        from vitkit.workflows.task_reports import write_detect_eval_report

        write_detect_eval_report(target, evaluation, record)
    return {**record, "eval_file": str(target / EVAL_FILE)}


def run_detect_predict(bundle: Path | str, inputs: Sequence[str], out: Path | None = None,
                       score_threshold: float | None = None, variant: str | None = None,
                       batch_size: int = 8, device: str = "auto", progress: bool = True
                       ) -> list[ImageDetections | ImageFailure]:
    """Boxes for every image in ``inputs`` (files, folders, globs), in each image's pixels;
    with ``out``, one ``<stem>_boxes.png`` overlay per image and ``boxes.json`` there.
    Unreadable images come back as :class:`ImageFailure` beside the others."""
    files, unmatched = find_images(inputs)
    require_images(files, unmatched)  # before the model loads
    detector = load_detector(bundle, variant, device)
    results: list[ImageDetections | ImageFailure] = [
        ImageFailure(item, why_unmatched(item)) for item in unmatched]
    names = overlay_names(files)
    with make_progress(progress and len(files) > batch_size) as bar:
        task = bar.add_task("Detecting", total=len(files), stats="") if bar else None
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            loaded = []
            for path in chunk:
                try:
                    loaded.append((path, load_rgb(path)[0]))
                except ImageProblem as problem:
                    results.append(ImageFailure(str(path), problem.reason))
            found = detector.predict([image for _, image in loaded], score_threshold)
            for (path, image), boxes in zip(loaded, found, strict=True):
                results.append(ImageDetections(str(path), image.width, image.height, boxes))
                if out is not None:
                    overlay = draw_boxes(image, boxes, detector.labels)
                    write_bytes_atomic(out / names[path], _png(overlay))
            if bar is not None and task is not None:
                bar.advance(task, len(chunk))
    if out is not None:
        write_json_atomic(out / BOXES_FILE, [r.to_dict() for r in results])
    return results


def _png(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_names(paths: Sequence[Path]) -> dict[Path, str]:
    """``<stem>_boxes.png`` per image; the parent folder's name is prefixed where stems
    collide, then a counter if they still do."""
    stems: dict[str, int] = {}
    for path in paths:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    names: dict[Path, str] = {}
    seen: set[str] = set()
    for path in paths:
        base = path.stem if stems[path.stem] == 1 else f"{path.parent.name}_{path.stem}"
        candidate, i = base, 1
        while candidate in seen:
            candidate, i = f"{base}_{i}", i + 1
        seen.add(candidate)
        names[path] = candidate + OVERLAY_SUFFIX
    return names
