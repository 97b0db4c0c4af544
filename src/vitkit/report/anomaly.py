"""The anomaly evaluation page: metrics, per-defect table, score histogram, worst images first.

Self-contained like the training report: overlays are embedded as ``data:`` URIs.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.atomic import write_text_atomic
from vitkit.report import _format as fmt
from vitkit.report._images import data_uri, reencoded_thumbnail
from vitkit.report._style import CSS
from vitkit.version import __version__

REPORT_FILE = "report.html"
CARDS_PER_GROUP = 12
"""Cards per kind (missed, false alarm, detected): enough to see a pattern, and the page stays
small; the table lists every image."""


def write_anomaly_report(out: Path, evaluation: Mapping[str, Any],
                         rows: Sequence[Mapping[str, Any]]) -> Path:
    """Writes ``out/report.html``.

    Args:
        out: Folder to write into (created if needed).
        evaluation: What ``eval.json`` holds (metrics, threshold, per-defect figures).
        rows: Scored test images, worst first: ``path``, ``defect``, ``score`` (normalised),
            ``raw_score``, ``label`` and ``overlay_png`` (PNG bytes).
    """
    out = Path(out)
    body = "\n".join([
        _header(evaluation),
        _overview(evaluation),
        _per_defect(evaluation),
        _fitting(evaluation),
        _histogram(rows, evaluation),
        _gallery(rows),
        _skipped(evaluation),
        _footer(),
    ])
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>vitkit anomaly report</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main class=\"page\">\n{body}\n</main>\n</body>\n</html>\n"
    )
    return write_text_atomic(out / REPORT_FILE, page)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _header(ev: Mapping[str, Any]) -> str:
    facts = [f"data <code>{_e(ev.get('data', '?'))}</code>",
             f"{fmt.integer(ev.get('n_normal'))} normal · "
             f"{fmt.integer(ev.get('n_anomalous'))} anomalous test images"]
    return ("<header class=\"masthead\">\n<div class=\"brand\">vitkit · anomaly report</div>\n"
            "<h1>Anomaly detection</h1>\n"
            f"<p class=\"facts\">{' · '.join(facts)}</p>\n</header>")


def _card(key: str, label: str, value: str, note: str, primary: bool = False) -> str:
    css = "metric primary" if primary else "metric"
    return (f"<div class=\"{css}\"><div class=\"metric-label\">{_e(label)}</div>"
            f"<div class=\"metric-value\" id=\"metric-{_e(key)}\">{_e(value)}</div>"
            f"<div class=\"metric-note\">{_e(note)}</div></div>")


def _overview(ev: Mapping[str, Any]) -> str:
    cards = [
        _card("image-auroc", "Image AUROC", fmt.decimal(ev.get("image_auroc"), 3),
              "ranking of normal vs anomalous", primary=True),
        _card("image-ap", "Image AP", fmt.decimal(ev.get("image_ap"), 3), "average precision"),
        _card("f1", "F1", fmt.decimal(ev.get("f1"), 3), "at the stored threshold"),
    ]
    if "pixel_auroc" in ev:
        cards.append(_card("pixel-auroc", "Pixel AUROC", fmt.decimal(ev.get("pixel_auroc"), 3),
                           "defect pixels vs normal pixels"))
    if "pro" in ev:
        cards.append(_card("pro", "PRO", fmt.decimal(ev.get("pro"), 3),
                           "per-region overlap, FPR ≤ 30%"))
    cards.append(_card("threshold", "Threshold", fmt.decimal(ev.get("threshold"), 4),
                       str(ev.get("threshold_source") or "raw score")))
    return f"<section class=\"metrics\" id=\"overview\">\n{''.join(cards)}\n</section>"


def _section(section_id: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f"<p class=\"lead\">{lead}</p>" if lead else ""
    return (f"<section class=\"card\" id=\"{section_id}\">\n<h2>{_e(title)}</h2>\n{lead_html}\n"
            f"{body}\n</section>")


def _per_defect(ev: Mapping[str, Any]) -> str:
    per_defect = ev.get("per_defect") or {}
    if not per_defect:
        return ""
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{fmt.integer(m.get('n'))}</td>"
        f"<td>{fmt.decimal(m.get('image_auroc'), 3)}</td>"
        f"<td>{fmt.decimal(m.get('image_ap'), 3)}</td><td>{fmt.decimal(m.get('f1'), 3)}</td></tr>"
        for name, m in sorted(per_defect.items())
    )
    table = ("<div class=\"table-wrap\"><table class=\"data numeric\" id=\"per-defect\">"
             "<thead><tr><th>Defect type</th><th>Images</th><th>AUROC</th><th>AP</th>"
             f"<th>F1</th></tr></thead><tbody>{rows}</tbody></table></div>")
    return _section("per-defect-section", "Per defect type", table,
                    "Each defect type against the normal test images.")


def _fitting(ev: Mapping[str, Any]) -> str:
    """The fit's settings and, when `--auto` chose them, every candidate's synthetic scores."""
    fitted = ev.get("fitted_with") or {}
    if not fitted:
        return ""
    settings = "".join(f"<tr><th>{_e(key)}</th><td>{_e('default' if value is None else value)}"
                       "</td></tr>" for key, value in fitted.items() if key != "auto")
    body = ("<div class=\"table-wrap\"><table class=\"data\" id=\"fit-settings\">"
            f"<tbody>{settings}</tbody></table></div>")
    auto = fitted.get("auto")
    lead = "The settings of the fit."
    if auto:
        rows = []
        for trial in auto.get("candidates", []):
            chosen = trial.get("settings") == auto.get("chosen")
            synthetic = trial.get("synthetic_auroc", {})
            row_class = ' class="chosen"' if chosen else ""
            rows.append(
                f"<tr{row_class}>"
                f"<td>{_e(_settings_text(trial.get('settings', {})))}</td>"
                f"<td>{fmt.decimal(synthetic.get('local'), 3)}</td>"
                f"<td>{fmt.decimal(synthetic.get('global'), 3)}</td>"
                f"<td>{fmt.decimal(trial.get('score'), 3)}</td>"
                f"<td>{fmt.decimal(trial.get('standard_error'), 3)}</td>"
                f"<td>{fmt.decimal(trial.get('seconds'), 1)}</td>"
                f"<td>{'chosen' if chosen else ''}</td></tr>")
        body += ("<h3>Candidates tried by --auto</h3><div class=\"table-wrap\">"
                 "<table class=\"data numeric\" id=\"auto-candidates\"><thead><tr>"
                 "<th>Settings</th><th>Synthetic local AUROC</th><th>Synthetic global AUROC</th>"
                 "<th>Score</th><th>Standard error</th><th>Seconds</th><th></th></tr></thead>"
                 f"<tbody>{''.join(rows)}</tbody></table></div>"
                 f"<p class=\"note\">Synthetic defects: {_e(auto.get('recipe', ''))}. "
                 f"Chosen: {_e(auto.get('rule', 'the best score'))}.</p>")
        lead = ("The settings of the fit; --auto chose them on synthetic defects, without "
                "seeing the defects of this test set.")
    return _section("fit-section", "How this detector was fitted", body, lead)


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {'default' if value is None else value}"
                     for key, value in settings.items()) or "defaults"


def _histogram(rows: Sequence[Mapping[str, Any]], ev: Mapping[str, Any]) -> str:
    if not rows:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    normal = np.array([r["score"] for r in rows if r["defect"] == "good"])
    anomalous = np.array([r["score"] for r in rows if r["defect"] != "good"])
    fig = Figure(figsize=(7.5, 2.8), dpi=110)
    ax = fig.add_subplot()
    bins: list[float] = np.linspace(0.0, 1.0, 41).tolist()  # matplotlib's stubs want a Sequence
    ax.hist(normal, bins=bins, alpha=0.65, label=f"normal ({len(normal)})", color="#1a7f37")
    ax.hist(anomalous, bins=bins, alpha=0.65, label=f"anomalous ({len(anomalous)})",
            color="#cf222e")
    ax.axvline(0.5, color="#1f2328", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel("normalised anomaly score (0.5 = threshold)")
    ax.set_ylabel("images")
    ax.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    uri = data_uri(buffer.getvalue(), "image/png")
    return _section("scores-section", "Score distribution",
                    f"<img class=\"plot\" id=\"score-histogram\" src=\"{uri}\" "
                    "alt=\"histogram of normal and anomalous scores\">")


def _gallery(rows: Sequence[Mapping[str, Any]]) -> str:
    """The most informative cards first, a few of each kind; every image in a table below."""
    def truth(row: Mapping[str, Any]) -> str:
        return "normal" if row["defect"] == "good" else "anomaly"

    by_score = sorted(rows, key=lambda r: -float(r["score"]))
    groups = [
        ("missed", "Missed defects", "anomalous images scored below the threshold, the most "
         "confidently missed first",
         sorted((r for r in rows if truth(r) == "anomaly" and r["label"] == "normal"),
                key=lambda r: float(r["score"]))),
        ("false-alarms", "False alarms", "normal images scored above the threshold, highest "
         "first", [r for r in by_score if truth(r) == "normal" and r["label"] == "anomaly"]),
        ("detected", "Detected defects", "anomalous images above the threshold, highest first",
         [r for r in by_score if truth(r) == "anomaly" and r["label"] == "anomaly"]),
    ]
    parts = []
    for key, title, what, members in groups:
        if not members:
            parts.append(f"<h3 id=\"{key}\">{_e(title)}: none</h3>")
            continue
        shown = members[:CARDS_PER_GROUP]
        more = len(members) - len(shown)
        parts.append(
            f"<h3 id=\"{key}\">{_e(title)} ({len(members)})</h3><p class=\"note\">{_e(what)}"
            + (f"; {more} more in the table below" if more else "") + ".</p>"
            f"<div class=\"grid\" id=\"gallery-{key}\">"
            + "".join(_figure(r, truth(r) == r["label"]) for r in shown) + "</div>")
    n_normal_ok = sum(1 for r in rows if truth(r) == "normal" and r["label"] == "normal")
    parts.append(f"<p class=\"note\">{n_normal_ok} normal images were correctly passed "
                 "(not shown as cards).</p>")
    parts.append(_all_images_table(by_score))
    lead = ("Anomaly maps over the images; the contour marks the threshold. Green frame: the "
            "verdict matches the folder; red: it does not.")
    return _section("gallery-section", "Where the detector is right and wrong", "\n".join(parts),
                    lead)


def _figure(row: Mapping[str, Any], correct: bool) -> str:
    name = Path(str(row["path"])).name
    uri = reencoded_thumbnail(row["overlay_png"])
    return (
        f"<figure class=\"prediction {'correct' if correct else 'wrong'}\" "
        f"title=\"{_e(row['path'])}\"><div class=\"thumb\"><img src=\"{uri}\" "
        f"alt=\"anomaly map of {_e(name)}\"></div><figcaption>"
        f"<span class=\"verdict\">{'✓' if correct else '✗'} {_e(row['label'])}</span>"
        f"<span class=\"line\"><span class=\"k\">type</span>{_e(row['defect'])}</span>"
        f"<span class=\"line\"><span class=\"k\">score</span>"
        f"<span class=\"score\">{row['score']:.3f}</span></span>"
        f"<span class=\"path\">{_e(name)}</span></figcaption></figure>"
    )


def _all_images_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = "".join(
        f"<tr><td class=\"path\">{_e(Path(str(r['path'])).name)}</td><td>{_e(r['defect'])}</td>"
        f"<td>{_e(r['label'])}</td><td>{float(r['score']):.3f}</td></tr>" for r in rows)
    return ("<details class=\"more\"><summary>All " + str(len(rows)) + " test images by score"
            "</summary><div class=\"table-wrap\"><table class=\"data numeric\" id=\"all-images\">"
            "<thead><tr><th>File</th><th>Type</th><th>Verdict</th><th>Score</th></tr></thead>"
            f"<tbody>{body}</tbody></table></div></details>")


def _skipped(ev: Mapping[str, Any]) -> str:
    skipped = ev.get("skipped") or []
    if not skipped:
        return ""
    rows = "".join(f"<tr><td class=\"path\">{_e(s.get('path'))}</td><td>{_e(s.get('error'))}"
                   "</td></tr>" for s in skipped)
    return _section("skipped-section", "Skipped files",
                    f"<div class=\"table-wrap\"><table class=\"data\" id=\"skipped\"><thead><tr>"
                    f"<th>File</th><th>Reason</th></tr></thead><tbody>{rows}</tbody></table></div>")


def _footer() -> str:
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    return f"<footer class=\"footer\">Generated by vitkit {_e(__version__)} on {_e(now)}.</footer>"
