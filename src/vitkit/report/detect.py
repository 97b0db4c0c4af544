"""The detection evaluation page: mAP, AP per class, the precision-recall curves at IoU 0.5
and the images with the most missed and false boxes, the boxes drawn on them.

Self-contained like the other reports: the plot and the images are PNG ``data:`` URIs.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vitkit.atomic import write_text_atomic
from vitkit.report import _format as fmt
from vitkit.report._images import data_uri, png_thumbnail
from vitkit.report._page import card, e, footer, header, page, section, table

REPORT_FILE = "report.html"
GALLERY_WORST = 8
GALLERY_BEST = 4
TRUTH_COLOUR = (255, 215, 0)
"""Ground-truth boxes are drawn in this colour (gold), under the predicted ones."""
_DPI = 110
_COLOURS = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0969da", "#cf222e",
            "#57606a", "#e16f24", "#3192aa"]
_MAX_LEGEND = 12


def gallery_picks(per_image: Sequence[Mapping[str, Any]], worst: int = GALLERY_WORST,
                  best: int = GALLERY_BEST
                  ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The images with the most errors (missed + false boxes; worst first) and, of the rest,
    those with the most boxes found and none wrong (best first)."""
    def errors(row: Mapping[str, Any]) -> int:
        return int(row.get("missed", 0)) + int(row.get("false", 0))

    ranked = sorted(per_image, key=lambda r: (-errors(r), str(r["path"])))
    bad = [r for r in ranked if errors(r) > 0][:worst]
    chosen = {str(r["path"]) for r in bad}
    good = sorted((r for r in per_image if str(r["path"]) not in chosen and errors(r) == 0
                   and int(r.get("matched", 0)) > 0),
                  key=lambda r: (-int(r.get("matched", 0)), str(r["path"])))[:best]
    return bad, good


def render_pr_curves(curves: Mapping[str, Mapping[str, Sequence[float]]],
                     per_class: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Precision against recall at IoU 0.5, a line per class (AP in the legend), as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=_DPI)
    ax = fig.add_subplot()
    for index, (name, curve) in enumerate(curves.items()):
        ap = (per_class.get(name) or {}).get("ap_50")
        ax.plot(list(curve.get("recall", [])), list(curve.get("precision", [])),
                color=_COLOURS[index % len(_COLOURS)], linewidth=1.6,
                label=f"{name} (AP {fmt.decimal(ap, 3)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall at IoU 0.5", fontsize=11)
    ax.grid(True, alpha=0.3)
    if 0 < len(curves) <= _MAX_LEGEND:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_detect_report(out: Path, evaluation: Mapping[str, Any],
                        gallery: Sequence[Mapping[str, Any]] = (),
                        skipped: Sequence[Mapping[str, Any]] = (),
                        dropped: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Writes ``out/report.html``.

    Args:
        out: Folder to write into (created if needed).
        evaluation: The ``vitkit detect eval`` record, with its ``pr_curves``.
        gallery: The images to show: ``path``, ``group`` (``worst`` or ``best``),
            ``truth``, ``predicted``, ``matched``, ``missed``, ``false`` and ``overlay_png``
            (PNG bytes: predicted boxes over ground-truth boxes in :data:`TRUTH_COLOUR`).
        skipped: Images left out: ``{"path", "reason"}``.
        dropped: Boxes left out: ``{"path", "where", "reason"}``.
    """
    body = "\n".join([
        _header(evaluation),
        _overview(evaluation),
        _per_class(evaluation),
        _curves(evaluation),
        _gallery(gallery),
        _left_out(evaluation, skipped, dropped),
        footer(),
    ])
    return write_text_atomic(Path(out) / REPORT_FILE, page("vitkit detection report", body))


def _header(ev: Mapping[str, Any]) -> str:
    facts = [f"bundle <code>{e(ev.get('bundle', '?'))}</code>",
             f"data <code>{e(ev.get('data', '?'))}</code>",
             f"split {e(ev.get('split', '?'))}", f"variant {e(ev.get('variant', '?'))}",
             f"{fmt.integer(ev.get('n_images'))} images",
             f"{fmt.integer(ev.get('skipped', 0))} skipped",
             f"{fmt.integer(ev.get('dropped_boxes', 0))} boxes dropped"]
    return header("vitkit · detection report", "Object detection", facts)


def _overview(ev: Mapping[str, Any]) -> str:
    cards = [
        card("map-50", "mAP@0.5", fmt.decimal(ev.get("map_50"), 4),
             "mean AP over the classes with boxes", primary=True),
        card("map-50-95", "mAP@0.5:0.95", fmt.decimal(ev.get("map_50_95"), 4),
             "COCO's mean over IoU 0.5…0.95"),
        card("images", "Images", fmt.integer(ev.get("n_images")), f"{ev.get('split', '?')} split"),
    ]
    return f"<section class=\"metrics\" id=\"overview\">\n{''.join(cards)}\n</section>"


def _per_class(ev: Mapping[str, Any]) -> str:
    per_class = ev.get("per_class") or {}
    if not per_class:
        return ""
    rows = [[e(name), fmt.decimal(m.get("ap_50"), 4), fmt.decimal(m.get("ap_50_95"), 4)]
            for name, m in per_class.items()]
    return section("per-class-section", "Per class",
                   table("per-class", ["Class", "AP@0.5", "AP@0.5:0.95"], rows),
                   "COCO average precision (101-point). — : the class has no box in these "
                   "images, and no part in the means.")


def _curves(ev: Mapping[str, Any]) -> str:
    curves = ev.get("pr_curves") or {}
    if not curves:
        return section("pr-section", "Precision-recall",
                       "<p class=\"absent\">No class has a box in these images: no curve.</p>")
    uri = data_uri(render_pr_curves(curves, ev.get("per_class") or {}), "image/png")
    return section("pr-section", "Precision-recall",
                   f"<img class=\"plot\" id=\"pr-curves\" src=\"{uri}\" "
                   "alt=\"precision-recall curve per class at IoU 0.5\">",
                   "Per class at IoU 0.5, as COCO interpolates it; the area under a curve is "
                   "its AP@0.5.")


def _gallery(gallery: Sequence[Mapping[str, Any]]) -> str:
    if not gallery:
        return ""
    parts = []
    for group, title, what in (
            ("worst", "Most missed and false boxes", "the most errors first"),
            ("best", "Every box found, none false", "the most boxes first")):
        members = [r for r in gallery if r.get("group") == group]
        if not members:
            continue
        parts.append(f"<h3 id=\"{group}\">{e(title)} ({len(members)})</h3>"
                     f"<p class=\"note\">{e(what)}.</p><div class=\"grid\" "
                     f"id=\"gallery-{group}\">" + "".join(_figure(r) for r in members)
                     + "</div>")
    r, g, b = TRUTH_COLOUR
    return section("gallery-section", "Images", "\n".join(parts),
                   "Predicted boxes at the bundle's score threshold, captioned with class and "
                   f"score; ground truth in <span class=\"swatch\" style=\"background: "
                   f"rgb({r}, {g}, {b})\"></span>gold. A prediction matches a true box of its "
                   "class at IoU ≥ 0.5.")


def _figure(row: Mapping[str, Any]) -> str:
    name = Path(str(row["path"])).name
    correct = int(row.get("missed", 0)) + int(row.get("false", 0)) == 0
    lines = "".join(f"<span class=\"line\"><span class=\"k\">{label}</span>"
                    f"<span class=\"score\">{fmt.integer(row.get(key))}</span></span>"
                    for key, label in (("truth", "boxes"), ("matched", "found"),
                                       ("missed", "missed"), ("false", "false")))
    return (f"<figure class=\"prediction {'correct' if correct else 'wrong'}\" "
            f"title=\"{e(row['path'])}\"><div class=\"thumb\"><img "
            f"src=\"{png_thumbnail(row['overlay_png'])}\" alt=\"boxes on {e(name)}\"></div>"
            f"<figcaption>{lines}<span class=\"path\">{e(name)}</span></figcaption></figure>")


def _left_out(ev: Mapping[str, Any], skipped: Sequence[Mapping[str, Any]],
              dropped: Sequence[Mapping[str, Any]]) -> str:
    n_skipped, n_dropped = int(ev.get("skipped") or 0), int(ev.get("dropped_boxes") or 0)
    if not (skipped or dropped or n_skipped or n_dropped):
        return ""
    parts = [f"<p>{fmt.integer(n_skipped)} images skipped, {fmt.integer(n_dropped)} boxes "
             "dropped.</p>"]
    if skipped:
        parts.append("<h3>Skipped images</h3>" + table(
            "skipped", ["Image", "Reason"],
            [[f"<span class=\"path\">{e(s.get('path'))}</span>", e(s.get("reason"))]
             for s in skipped], numeric=False))
    if dropped:
        parts.append("<h3>Dropped boxes</h3>" + table(
            "dropped", ["File", "Where", "Reason"],
            [[f"<span class=\"path\">{e(d.get('path'))}</span>", e(d.get("where")),
              e(d.get("reason"))] for d in dropped], numeric=False))
    return section("left-out-section", "Left out", "\n".join(parts),
                   "What the data layer could not use: not in the figures.")
