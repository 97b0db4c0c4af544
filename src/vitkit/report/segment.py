"""The segmentation evaluation page: Dice, IoU, the per-class table and the worst and best
images, each as its predicted mask beside the true one.

Self-contained like the other reports: the overlays are embedded as PNG ``data:`` URIs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vitkit.atomic import write_text_atomic
from vitkit.report import _format as fmt
from vitkit.report._images import png_thumbnail
from vitkit.report._page import card, e, footer, header, page, section, table
from vitkit.segment.predict import class_colours

REPORT_FILE = "report.html"
GALLERY_SIZE = 8
"""Images shown per group (worst, best): enough to see a pattern; the table lists all."""


def gallery_picks(per_image: Sequence[Mapping[str, Any]], size: int = GALLERY_SIZE
                  ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The ``size`` lowest-Dice images (worst first) and the ``size`` highest of the rest
    (best first); images without a Dice (no foreground in either mask) are in neither."""
    scored = sorted((r for r in per_image if r.get("dice") is not None),
                    key=lambda r: (float(r["dice"]), str(r["path"])))
    worst = scored[:size]
    rest = scored[len(worst):]
    best = list(reversed(rest[-size:])) if rest else []
    return worst, best


def write_segment_report(out: Path, evaluation: Mapping[str, Any],
                         per_image: Sequence[Mapping[str, Any]] = (),
                         gallery: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Writes ``out/report.html``.

    Args:
        out: Folder to write into (created if needed).
        evaluation: The ``vitkit segment eval`` record (and ``bundle``, ``data``).
        per_image: Every image's ``{"path", "dice", "iou", "classes"}`` (class indices its
            mask holds), as :func:`~vitkit.segment.evaluate.evaluate_pairs` gives them.
        gallery: The images to show: ``path``, ``dice``, ``iou``, ``group`` (``worst`` or
            ``best``), ``prediction_png`` and ``truth_png`` (overlays, PNG bytes).
    """
    labels = list((evaluation.get("per_class") or {}).keys())
    body = "\n".join([
        _header(evaluation),
        _overview(evaluation),
        _per_class(evaluation, per_image, labels),
        _gallery(gallery, labels),
        _all_images(per_image),
        _skipped(evaluation),
        footer(),
    ])
    return write_text_atomic(Path(out) / REPORT_FILE,
                             page("vitkit segmentation report", body))


def _header(ev: Mapping[str, Any]) -> str:
    facts = [f"bundle <code>{e(ev.get('bundle', '?'))}</code>",
             f"data <code>{e(ev.get('data', '?'))}</code>",
             f"split {e(ev.get('split', '?'))}", f"variant {e(ev.get('variant', '?'))}",
             f"{fmt.integer(ev.get('n_images'))} images",
             f"{fmt.integer(ev.get('n_skipped', 0))} skipped"]
    return header("vitkit · segmentation report", "Semantic segmentation", facts)


def _overview(ev: Mapping[str, Any]) -> str:
    cards = [
        card("dice", "Mean Dice", fmt.decimal(ev.get("dice"), 4),
             "over the foreground classes", primary=True),
        card("iou", "Mean IoU", fmt.decimal(ev.get("iou"), 4), "over the foreground classes"),
        card("pixel-accuracy", "Pixel accuracy", fmt.percent(ev.get("pixel_accuracy"), 2),
             f"of {fmt.integer(ev.get('pixels'))} pixels"),
        card("images", "Images", fmt.integer(ev.get("n_images")),
             f"{ev.get('split', '?')} split"),
    ]
    return f"<section class=\"metrics\" id=\"overview\">\n{''.join(cards)}\n</section>"


def _swatch(index: int, n: int) -> str:
    r, g, b = class_colours(n)[index] if index < n else (255, 255, 255)
    return f"<span class=\"swatch\" style=\"background: rgb({r}, {g}, {b})\"></span>"


def _per_class(ev: Mapping[str, Any], per_image: Sequence[Mapping[str, Any]],
               labels: list[str]) -> str:
    per_class = ev.get("per_class") or {}
    if not per_class:
        return ""
    images = [0] * len(labels)
    for row in per_image:
        for index in row.get("classes") or []:
            if 0 <= int(index) < len(images):
                images[int(index)] += 1
    rows = []
    for index, (name, m) in enumerate(per_class.items()):
        rows.append([f"{_swatch(index, len(labels))}{e(name)}"
                     + (" <span class=\"note\">(background)</span>" if index == 0 else ""),
                     fmt.decimal(m.get("dice"), 4), fmt.decimal(m.get("iou"), 4),
                     fmt.integer(m.get("pixels")),
                     fmt.integer(images[index]) if per_image else fmt.MISSING])
    return section("per-class-section", "Per class",
                   table("per-class", ["Class", "Dice", "IoU", "Pixels", "Images"], rows),
                   "Over all pixels of all images together; the means leave the background "
                   "out. Pixels: of that class in the true masks; images: whose mask holds it."
                   " — means the class is in neither the masks nor the predictions.")


def _gallery(gallery: Sequence[Mapping[str, Any]], labels: list[str]) -> str:
    if not gallery:
        return ""
    parts = []
    for group, title, what in (("worst", "Lowest Dice", "the worst first"),
                               ("best", "Highest Dice", "the best first")):
        members = [r for r in gallery if r.get("group") == group]
        if not members:
            continue
        parts.append(f"<h3 id=\"{group}\">{e(title)} ({len(members)})</h3>"
                     f"<p class=\"note\">{e(what)}.</p>"
                     f"<div class=\"grid pairs\" id=\"gallery-{group}\">"
                     + "".join(_figure(r) for r in members) + "</div>")
    legend = " ".join(f"{_swatch(i, len(labels))}{e(name)}"
                      for i, name in enumerate(labels) if i > 0)
    return section("gallery-section", "Images by Dice", "\n".join(parts),
                   f"Each image's own mean foreground Dice: the prediction (left) beside the "
                   f"true mask (right). Classes: {legend}")


def _figure(row: Mapping[str, Any]) -> str:
    name = Path(str(row["path"])).name
    sides = "".join(
        f"<div class=\"side\"><img src=\"{png_thumbnail(row[key])}\" "
        f"alt=\"{what} of {e(name)}\"><span class=\"side-label\">{what}</span></div>"
        for key, what in (("prediction_png", "prediction"), ("truth_png", "ground truth")))
    return (f"<figure class=\"prediction neutral\" title=\"{e(row['path'])}\">"
            f"<div class=\"pair\">{sides}</div><figcaption>"
            f"<span class=\"line\"><span class=\"k\">Dice</span>"
            f"<span class=\"score\">{fmt.decimal(row.get('dice'), 4)}</span></span>"
            f"<span class=\"line\"><span class=\"k\">IoU</span>"
            f"<span class=\"score\">{fmt.decimal(row.get('iou'), 4)}</span></span>"
            f"<span class=\"path\">{e(name)}</span></figcaption></figure>")


def _all_images(per_image: Sequence[Mapping[str, Any]]) -> str:
    if not per_image:
        return ""
    ordered = sorted(per_image, key=lambda r: (r.get("dice") is None,
                                               float(r.get("dice") or 0.0), str(r["path"])))
    rows = "".join(f"<tr><td class=\"path\">{e(Path(str(r['path'])).name)}</td>"
                   f"<td>{fmt.decimal(r.get('dice'), 4)}</td>"
                   f"<td>{fmt.decimal(r.get('iou'), 4)}</td></tr>" for r in ordered)
    return section("images-section", "Every image",
                   "<details class=\"more\"><summary>All " + str(len(ordered)) + " images by "
                   "Dice</summary><div class=\"table-wrap\"><table class=\"data numeric\" "
                   "id=\"all-images\"><thead><tr><th>File</th><th>Dice</th><th>IoU</th></tr>"
                   f"</thead><tbody>{rows}</tbody></table></div></details>",
                   "— : neither mask holds a foreground pixel (nothing to find).")


def _skipped(ev: Mapping[str, Any]) -> str:
    skipped = ev.get("skipped") or []
    if not skipped:
        return ""
    rows = [[f"<span class=\"path\">{e(s.get('path'))}</span>", e(s.get("reason"))]
            for s in skipped]
    return section("skipped-section", "Skipped pairs",
                   table("skipped", ["Image", "Reason"], rows, numeric=False),
                   "Image/mask pairs left out of the figures.")
