"""A single self-contained HTML page summarizing a training run.

Every input file is optional; the page says what is missing. Images are embedded as
``data:`` URIs and styles are inline, so the file can be mailed, archived or opened offline.
Plots missing from the run directory are drawn in memory; only the page itself is written.

Over ~450 lines on purpose: one page, read top to bottom, one function per section; its
inputs (:mod:`vitkit.report._inputs`), style, formatting and images are already apart.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from vitkit.atomic import write_text_atomic
from vitkit.errors import VitkitError
from vitkit.evaluate.words import describe_accuracy
from vitkit.report import _format as fmt
from vitkit.report._images import data_uri, resolve_image, thumbnail_html
from vitkit.report._inputs import (
    EVAL,
    METRICS,
    PREDICTIONS,
    PURPOSE,
    SKIPPED,
    SUMMARY,
    RunInputs,
    read_run,
)
from vitkit.report._style import CSS
from vitkit.report.continual import render_continual
from vitkit.report.curves import render_learning_curve
from vitkit.report.domain import render_domain_adaptation
from vitkit.report.plots import render_confusion_matrix, render_learning_curves
from vitkit.report.trust import render_trust
from vitkit.version import __version__

DEFAULT_MAX_PREDICTIONS = 120
_MAX_SKIPPED_ROWS = 500
_METRIC_COLUMNS = {
    "epoch": ("Epoch", fmt.integer),
    "stage": ("Stage", None),
    "lr": ("LR", fmt.learning_rate),
    "train_loss": ("Train loss", fmt.decimal),
    "train_acc": ("Train acc", fmt.percent),
    "val_loss": ("Val loss", fmt.decimal),
    "val_acc": ("Val acc", fmt.percent),
    "images_per_s": ("Images/s", lambda v: fmt.decimal(v, 1)),
    "seconds": ("Time", fmt.duration),
    "image_size": ("Size (px)", fmt.integer),
}


RUN_MARKERS = ("summary.json", "eval.json", "metrics.csv", "predictions.json", "skipped.csv",
               "config.yaml")
"""Files of which a training run folder holds at least one (an interrupted run: config.yaml
and skipped.csv from the start, metrics.csv after the first epoch)."""


def write_report(
    run_dir: Path, out: Path | None = None, *, max_predictions: int = DEFAULT_MAX_PREDICTIONS
) -> Path:
    """Write a self-contained HTML report of a training run.

    Reads whichever of ``summary.json``, ``eval.json``, ``metrics.csv``,
    ``learning_curves.png``, ``confusion_matrix.png``, ``predictions.json`` and
    ``skipped.csv`` exist in ``run_dir``. Missing plots are drawn from the data; the run
    directory is not modified apart from the report itself.

    Args:
        run_dir: The run directory.
        out: Destination file; defaults to ``run_dir / "report.html"``.
        max_predictions: Most sample predictions to show (wrong ones first).

    Returns:
        The path of the written report.

    Raises:
        VitkitError: If ``run_dir`` is not a directory.
        ValueError: If ``max_predictions`` is negative.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VitkitError(
            f"Cannot write a report: run directory {run_dir} does not exist or is not a "
            "directory. Pass the folder a training run wrote its outputs to."
        )
    if not any((run_dir / name).is_file() for name in RUN_MARKERS):
        raise VitkitError(
            f"Cannot write a report: {run_dir} is not a training run folder (it has none of "
            f"{', '.join(RUN_MARKERS)}). Pass the --out folder of `vitkit train` or `vitkit "
            "distill`; an anomaly bundle's report is written by `vitkit anomaly eval`."
        )
    if max_predictions < 0:
        raise ValueError(f"max_predictions must be >= 0, got {max_predictions}")
    out = run_dir / "report.html" if out is None else Path(out)
    page = render_report(read_run(run_dir), max_predictions=max_predictions)
    return write_text_atomic(out, page)


def render_report(run: RunInputs, max_predictions: int = DEFAULT_MAX_PREDICTIONS) -> str:
    """Render the report page for already read run inputs."""
    summary = run.summary or {}
    title = str(summary.get("model") or run.run_dir.resolve().name or "run")
    body = "\n".join(
        [
            _header(run, title),
            _notices(run),
            _overview(run),
            _run_details(run),
            _training(run),
            render_learning_curve(run),
            _evaluation(run),
            _test_evaluation(run),
            render_domain_adaptation(run.run_dir),
            render_continual(run.run_dir),
            _predictions(run, max_predictions),
            render_trust(run),
            _skipped(run),
            _footer(run),
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>vitkit report · {_e(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f'<body>\n<main class="page">\n{body}\n</main>\n</body>\n</html>\n'
    )


def _e(value: object) -> str:
    """Escape text for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def _section(section_id: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return (
        f'<section class="card" id="{section_id}">\n<h2>{_e(title)}</h2>\n{lead_html}\n'
        f"{body}\n</section>"
    )


def _absent(text: str) -> str:
    return f'<p class="absent">{text}</p>'


def _header(run: RunInputs, title: str) -> str:
    summary = run.summary or {}
    facts = []
    if summary.get("data"):
        facts.append(f"data <code>{_e(summary['data'])}</code>")
    if summary.get("created"):
        facts.append(f"created {_e(fmt.timestamp(summary['created']))}")
    facts.append(f"run <code>{_e(run.run_dir.resolve().name)}</code>")
    return (
        '<header class="masthead">\n<div class="brand">vitkit · training report</div>\n'
        f"<h1>{_e(title)}</h1>\n"
        f'<p class="facts">{" · ".join(facts)}</p>\n</header>'
    )


def _notices(run: RunInputs) -> str:
    if not run.missing and not run.problems:
        return ""
    items = [
        f"<li><code>{_e(name)}</code> not found: no {_e(PURPOSE.get(name, 'data'))}</li>"
        for name in run.missing
    ]
    items += [f"<li><code>{_e(name)}</code> {_e(message)}</li>" for name, message in run.problems]
    return (
        '<aside class="notice" id="missing-inputs" role="note">\n'
        "<strong>Parts of this report are unavailable.</strong>\n"
        f"<ul>{''.join(items)}</ul>\n</aside>"
    )


def _overview(run: RunInputs) -> str:
    ev = run.eval or {}
    summary = run.summary or {}
    if fmt.number(ev.get("accuracy")) is not None:
        accuracy = ev["accuracy"]
        split = str(ev.get("split") or "evaluation")
        count = fmt.number(ev.get("n"))
        note = f"{split} split" + (f" · {fmt.integer(count)} images" if count else "")
    elif fmt.number(summary.get("val_accuracy")) is not None:
        accuracy, note = summary["val_accuracy"], "validation (from summary.json)"
    else:
        accuracy, note = None, "no eval.json or summary.json"
    cards = [_card("accuracy", "Accuracy", fmt.percent(accuracy), note, primary=True)]
    test = run.test_eval or {}
    if fmt.number(test.get("accuracy")) is not None:
        count = fmt.number(test.get("n"))
        cards.insert(0, _card("test-accuracy", "Test accuracy", fmt.percent(test["accuracy"]),
                              "held-out test split" + (f" · {fmt.integer(count)} images"
                                                       if count else ""), primary=True))
    if ev:
        cards.append(
            _card(
                "balanced-accuracy",
                "Balanced accuracy",
                fmt.percent(ev.get("balanced_accuracy")),
                "mean recall over classes",
            )
        )
        raw_top_k = ev.get("top_k")
        top_k: Mapping[str, object] = raw_top_k if isinstance(raw_top_k, Mapping) else {}
        for k in sorted((k for k in top_k if str(k).isdigit() and int(k) > 1), key=int):
            cards.append(
                _card(
                    f"top-{k}",
                    f"Top-{k} accuracy",
                    fmt.percent(top_k[k]),
                    f"true class among the {k} best",
                )
            )
        cards.append(
            _card("ece", "Calibration error", fmt.percent(ev.get("ece")), "ECE · lower is better")
        )
        cards.append(
            _card("nll", "Log loss", fmt.decimal(ev.get("nll"), 3), "mean NLL · lower is better")
        )
    return f'<section class="metrics" id="overview">\n{"".join(cards)}\n</section>'


def _card(key: str, label: str, value: str, note: str, primary: bool = False) -> str:
    css = "metric primary" if primary else "metric"
    return (
        f'<div class="{css}"><div class="metric-label">{_e(label)}</div>'
        f'<div class="metric-value" id="metric-{_e(key)}">{_e(value)}</div>'
        f'<div class="metric-note">{_e(note)}</div></div>'
    )


def _run_details(run: RunInputs) -> str:
    if run.summary is None:
        return _section("run", "Run", _absent(f"No run details: {_why(run, SUMMARY)}."))
    s = run.summary
    classes = s.get("classes")
    classes_text = fmt.MISSING
    if isinstance(classes, list):
        classes_text = f"{len(classes)}: " + ", ".join(str(c) for c in classes)
    rows = [
        ("Model", s.get("model")),
        ("Data", s.get("data")),
        ("Bundle", s.get("bundle")),
        ("Classes", classes_text if classes is not None else None),
        ("Training images", fmt.integer(s["train_images"]) if "train_images" in s else None),
        ("Validation images", fmt.integer(s["val_images"]) if "val_images" in s else None),
        ("Validation accuracy", fmt.percent(s["val_accuracy"]) if "val_accuracy" in s else None),
        ("Epochs run", fmt.integer(s["epochs_run"]) if "epochs_run" in s else None),
        ("Best epoch", fmt.integer(s["best_epoch"]) if "best_epoch" in s else None),
        ("Skipped files", fmt.integer(s["skipped"]) if "skipped" in s else None),
        ("Training time", fmt.duration(s["seconds"]) if "seconds" in s else None),
        ("Attention", s.get("attention")),  # sdpa (fused), eager, mixed or none (a CNN)
        ("Progressive resizing", s.get("progressive")),
        ("Gradient checkpointing", "on" if s.get("grad_checkpointing") else None),
        ("Created", fmt.timestamp(s["created"]) if "created" in s else None),
    ]
    cells = "".join(
        f'<tr><th scope="row">{_e(name)}</th><td>{_e(value)}</td></tr>'
        for name, value in rows
        if value is not None and value != ""
    )
    body = f'<table class="kv">{cells}</table>' if cells else _absent("summary.json is empty.")
    return _section("run", "Run", body)


def _training(run: RunInputs) -> str:
    parts = []
    png = run.learning_curves_png
    plot_error = ""
    if png is None and run.metrics:
        try:
            png = render_learning_curves(run.metrics)
        except ValueError as err:
            plot_error = str(err)
    if png is not None:
        parts.append(
            f'<img id="learning-curves" class="plot" src="{data_uri(png, "image/png")}" '
            'alt="Learning curves: loss and accuracy per epoch">'
        )
    elif plot_error:
        parts.append(_absent(f"No learning curves: {_e(plot_error)}."))
    if run.metrics:
        parts.append(_epoch_table(run))
    elif run.metrics is not None:
        parts.append(_absent("metrics.csv has no rows."))
    else:
        parts.append(_absent(f"No per-epoch metrics: {_why(run, METRICS)}."))
    return _section("training", "Training", "\n".join(parts))


def _epoch_table(run: RunInputs) -> str:
    rows = run.metrics or []
    columns = list(rows[0].keys())
    best = _best_epoch_index(run)
    head = "".join(
        f'<th scope="col">{_e(_METRIC_COLUMNS.get(c, (c, None))[0])}</th>' for c in columns
    )
    body = []
    for i, row in enumerate(rows):
        cells = []
        for c in columns:
            formatter = _METRIC_COLUMNS.get(c, (c, None))[1]
            raw = row.get(c)
            text = formatter(raw) if formatter else (raw if raw not in (None, "") else fmt.MISSING)
            cells.append(f"<td>{_e(text)}</td>")
        css = ' class="best"' if i == best else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    caption = f"{len(rows)} epoch{'s' if len(rows) != 1 else ''}"
    if best is not None:
        caption += " · best epoch highlighted"
    return (
        f'<div class="table-wrap"><table class="data numeric" id="epochs">'
        f"<caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _best_epoch_index(run: RunInputs) -> int | None:
    """Row of the best epoch: ``best_epoch`` from summary.json, else the highest val_acc."""
    rows = run.metrics or []
    best_epoch = fmt.number((run.summary or {}).get("best_epoch"))
    if best_epoch is not None:
        for i, row in enumerate(rows):
            if fmt.number(row.get("epoch")) == best_epoch:
                return i
    scores = [(fmt.number(row.get("val_acc")), i) for i, row in enumerate(rows)]
    valid = [(score, -i) for score, i in scores if score is not None]
    return -max(valid)[1] if valid else None


def _evaluation(run: RunInputs) -> str:
    ev = run.eval
    parts = []
    png = run.confusion_matrix_png
    plot_error = ""
    labels = [str(label) for label in ev.get("labels", [])] if ev else []
    if png is None and ev and "confusion_matrix" in ev:
        try:
            png = render_confusion_matrix(ev["confusion_matrix"], labels)
        except ValueError as err:
            plot_error = str(err)
    if png is not None:
        parts.append(
            f'<img id="confusion-matrix" class="plot matrix" src="{data_uri(png, "image/png")}" '
            'alt="Confusion matrix: rows are true classes, columns predicted classes">'
        )
    elif plot_error:
        parts.append(_absent(f"No confusion matrix: {_e(plot_error)}."))
    if ev is None:
        parts.append(_absent(f"No evaluation metrics: {_why(run, EVAL)}."))
    elif isinstance(ev.get("per_class"), Mapping) and ev["per_class"]:
        parts.append(_per_class_table(ev["per_class"], labels))
    else:
        parts.append(_absent("eval.json has no per-class metrics."))
    split = str(ev.get("split")) if ev and ev.get("split") else ""
    title = "Evaluation" + (f" ({split} split)" if split else "")
    return _section("evaluation", title, "\n".join(parts))


def _test_evaluation(run: RunInputs) -> str:
    test = run.test_eval
    if not test or not isinstance(test.get("per_class"), Mapping):
        return ""
    labels = [str(label) for label in test.get("labels", [])]
    parts = [f'<p id="test-in-words">{_e(describe_accuracy(test))}</p>',
             _per_class_table(test["per_class"], labels, "test-per-class")]
    if "confusion_matrix" in test:
        try:
            png = render_confusion_matrix(test["confusion_matrix"], labels)
            parts.insert(1, f'<img id="test-confusion-matrix" class="plot matrix" '
                            f'src="{data_uri(png, "image/png")}" alt="Confusion matrix of the '
                            'test split: rows are true classes, columns predicted classes">')
        except ValueError:
            pass
    lead = ("Images set aside before training: neither the weights nor the choice of the best "
            "epoch saw them, so these figures are what to expect on new images like them.")
    return _section("test-evaluation", "Held-out test split", "\n".join(parts), _e(lead))


def _per_class_table(per_class: Mapping[str, object], labels: list[str],
                     table_id: str = "per-class") -> str:
    order = [label for label in labels if label in per_class]
    order += [label for label in per_class if label not in order]
    rows = []
    for label in order:
        value = per_class[label]
        m: Mapping[str, object] = value if isinstance(value, Mapping) else {}
        f1 = fmt.number(m.get("f1"))
        width = 0.0 if f1 is None else max(0.0, min(1.0, f1)) * 100
        rows.append(
            f'<tr><th scope="row">{_e(label)}</th>'
            f"<td>{_e(fmt.percent(m.get('precision')))}</td>"
            f"<td>{_e(fmt.percent(m.get('recall')))}</td>"
            f'<td class="bar-cell"><span class="bar" style="width:{width:.1f}%"></span>'
            f'<span class="bar-text">{_e(fmt.percent(f1))}</span></td>'
            f"<td>{_e(fmt.integer(m.get('support')))}</td></tr>"
        )
    return (
        f'<div class="table-wrap"><table class="data numeric" id="{table_id}">'
        "<caption>Per-class metrics</caption><thead><tr>"
        '<th scope="col">Class</th><th scope="col">Precision</th><th scope="col">Recall</th>'
        '<th scope="col">F1</th><th scope="col">Support</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _predictions(run: RunInputs, limit: int) -> str:
    if run.predictions is None:
        return _section(
            "predictions-section",
            "Sample predictions",
            _absent(f"No sample predictions: {_why(run, PREDICTIONS)}."),
        )
    entries = [p for p in run.predictions if _is_prediction(p)]
    invalid = len(run.predictions) - len(entries)
    wrong = [p for p in entries if str(p["true"]) != str(p["pred"])]
    right = [p for p in entries if str(p["true"]) == str(p["pred"])]
    # Confident mistakes are the most informative, so they lead.
    wrong.sort(key=lambda p: fmt.number(p.get("score")) or 0.0, reverse=True)
    shown = (wrong + right)[:limit]
    lead = (
        f"{fmt.integer(len(entries))} predictions, {fmt.integer(len(wrong))} wrong. "
        f"Showing {fmt.integer(len(shown))}, wrong ones first."
    )
    if invalid:
        lead += f" {fmt.integer(invalid)} malformed entries ignored."
    roots = _image_roots(run)
    figures = [_figure(p, roots) for p in shown]
    grid = f'<div class="grid" id="predictions">{"".join(figures)}</div>'
    return _section("predictions-section", "Sample predictions", grid, _e(lead))


def _is_prediction(entry: object) -> bool:
    return isinstance(entry, Mapping) and all(
        entry.get(key) is not None for key in ("path", "true", "pred")
    )


def _image_roots(run: RunInputs) -> list[Path]:
    """Folders against which relative prediction paths are tried, in order."""
    roots = [run.run_dir]
    data = (run.summary or {}).get("data")
    if isinstance(data, str) and data:
        roots.append(Path(data))
    roots.append(Path.cwd())
    return roots


def _figure(p: Mapping[str, object], roots: list[Path]) -> str:
    path = str(p["path"])
    true, pred = str(p["true"]), str(p["pred"])
    correct = true == pred
    visual = thumbnail_html(resolve_image(path, roots), Path(path).name)
    verdict = "correct" if correct else "wrong"
    score = fmt.percent(p.get("score"))
    return (
        f'<figure class="prediction {verdict}" title="{_e(path)}">'
        f'<div class="thumb">{visual}</div>'
        f'<figcaption><span class="verdict">{"✓ correct" if correct else "✗ wrong"}</span>'
        f'<span class="line"><span class="k">true</span> {_e(true)}</span>'
        f'<span class="line"><span class="k">pred</span> {_e(pred)} '
        f'<span class="score">{_e(score)}</span></span>'
        f'<span class="path">{_e(Path(path).name)}</span></figcaption></figure>'
    )


def _skipped(run: RunInputs) -> str:
    rows = run.skipped
    if rows is None:
        reported = fmt.number((run.summary or {}).get("skipped"))
        if reported == 0:
            body = '<p class="ok" id="skipped">No files were skipped.</p>'
        else:
            body = (
                f'<p class="absent" id="skipped">No list of skipped files: '
                f"{_why(run, SKIPPED)}.</p>"
            )
    elif not rows:
        body = '<p class="ok" id="skipped">No files were skipped.</p>'
    else:
        shown = rows[:_MAX_SKIPPED_ROWS]
        cells = "".join(
            f'<tr><td class="path">{_e(r.get("path") or fmt.MISSING)}</td>'
            f"<td>{_e(r.get('reason') or fmt.MISSING)}</td></tr>"
            for r in shown
        )
        more = len(rows) - len(shown)
        caption = f"{fmt.integer(len(rows))} file{'s' if len(rows) != 1 else ''} skipped"
        if more:
            caption += f" · first {fmt.integer(len(shown))} shown"
        body = (
            f'<div class="table-wrap"><table class="data" id="skipped">'
            f"<caption>{_e(caption)}</caption>"
            '<thead><tr><th scope="col">File</th><th scope="col">Reason</th></tr></thead>'
            f"<tbody>{cells}</tbody></table></div>"
        )
    return _section("skipped-section", "Skipped files", body)


def _why(run: RunInputs, name: str) -> str:
    """Why a file's content is unavailable, as HTML."""
    for problem_name, message in run.problems:
        if problem_name == name:
            return f"<code>{_e(name)}</code> {_e(message)}"
    return f"<code>{_e(name)}</code> not found in the run directory"


def _footer(run: RunInputs) -> str:
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    return (
        f'<footer class="footer">Generated by vitkit {_e(__version__)} on {_e(now)} from '
        f"<code>{_e(run.run_dir.resolve())}</code>.</footer>"
    )
