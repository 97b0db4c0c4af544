"""The report's Trust part: calibration, out-of-distribution, explanations, feature map,
robustness and fairness, each rendered from its file in the run directory when present.

A section whose file is absent says in one line which command produces it. Files written by
other steps are read defensively (unknown keys are ignored, missing values show as '—'), and
every image is embedded as a ``data:`` URI so the page stays self-contained.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.report import _format as fmt
from vitkit.report._images import data_uri, resolve_image, thumbnail_html
from vitkit.report._inputs import (
    CALIBRATION,
    EXPLANATIONS,
    EXPLANATIONS_DIR,
    FAIRNESS,
    FEATURE_MAP,
    OOD,
    ROBUSTNESS,
    RunInputs,
)

MAX_EXPLANATIONS = 48
_MAX_CLASS_COLUMNS = 6
_HINTS = {
    "calibration": "<code>vitkit train</code> fits a temperature on the validation images "
                   "(unless <code>--no-calibrate</code>); for an existing bundle run "
                   "<code>vitkit calibrate BUNDLE</code>.",
    "ood": "<code>vitkit train</code> fits out-of-distribution statistics into the bundle "
           "(unless <code>--no-ood</code>).",
    "explanations": "<code>vitkit train</code> explains a few validation images "
                    "(<code>trust.explain_examples</code> in the config).",
    "feature_map": "<code>vitkit train</code> draws it from the validation features "
                   "(<code>trust.feature_map</code> in the config).",
    "robustness": "run <code>vitkit robustness BUNDLE DATA</code> (it writes into the bundle's "
                  "run folder, or <code>--out RUN_DIR</code>).",
    "fairness": "run <code>vitkit eval BUNDLE DATA --groups groups.csv --out RUN_DIR</code> "
                "with a CSV <code>path,group</code>.",
}


def render_trust(run: RunInputs) -> str:
    """The Trust part of the report page (a heading and six sections)."""
    sections = [
        _calibration(run),
        _ood(run),
        _explanations(run),
        _feature_map(run),
        _robustness(run),
        _fairness(run),
    ]
    return (
        '<header class="part-head" id="trust"><h2>Trust</h2>'
        '<p class="lead">How far the model\'s answers can be relied on: calibrated '
        "confidence, what it does with unfamiliar images, what it looks at, how its features "
        "group, how it copes with damaged images, and whether it treats groups alike.</p>"
        "</header>\n" + "\n".join(sections)
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _section(section_id: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return (f'<section class="card trust" id="{section_id}">\n<h2>{_e(title)}</h2>\n'
            f"{lead_html}\n{body}\n</section>")


def _absent(run: RunInputs, name: str, hint: str) -> str:
    for problem_name, message in run.problems:
        if problem_name == name:
            return f'<p class="absent"><code>{_e(name)}</code> {_e(message)}.</p>'
    return (f'<p class="absent">No <code>{_e(name)}</code> in the run directory: '
            f"{_HINTS[hint]}</p>")


def _plot(element_id: str, png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return (f'<img id="{element_id}" class="plot" src="{data_uri(png, "image/png")}" '
            f'alt="{_e(alt)}">')


def _redraw(draw: Callable[[], bytes]) -> bytes | None:
    """A plot drawn from the JSON when its PNG is missing; ``None`` when the data cannot."""
    try:
        return draw()
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def _kv(rows: Sequence[tuple[str, str]], table_id: str) -> str:
    cells = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in rows
                    if v != fmt.MISSING)
    return f'<table class="kv" id="{table_id}">{cells}</table>' if cells else ""


def _table(table_id: str, caption: str, head: Sequence[str], rows: Sequence[Sequence[str]]
           ) -> str:
    head_html = "".join(f'<th scope="col">{_e(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<div class="table-wrap"><table class="data numeric" id="{table_id}">'
            f"<caption>{_e(caption)}</caption><thead><tr>{head_html}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def _arrow(before: object, after: object, show: Callable[[object], str]) -> str:
    if fmt.number(before) is None and fmt.number(after) is None:
        return fmt.MISSING
    return f"{show(before)} → {show(after)}"


def _points(value: object) -> str:
    """An accuracy drop (a fraction) in percentage points."""
    x = fmt.number(value)
    return fmt.MISSING if x is None else f"{x * 100:.1f} pp"


def _calibration(run: RunInputs) -> str:
    c = run.trust.calibration
    if c is None:
        return _section("calibration", "Calibration", _absent(run, CALIBRATION, "calibration"))
    rows = [
        ("Temperature", fmt.decimal(c.get("temperature"), 3)),
        ("ECE (before → after)", _arrow(c.get("ece_before"), c.get("ece_after"), fmt.percent)),
        ("Log loss (before → after)",
         _arrow(c.get("nll_before"), c.get("nll_after"), lambda v: fmt.decimal(v, 3))),
        ("Fitted on", f"{c.get('fitted_on') or 'val'} · {fmt.integer(c.get('n'))} images"),
        ("Accuracy", fmt.percent(c.get("accuracy"))),
    ]
    png = run.trust.reliability_png
    reliability = c.get("reliability")
    if png is None and isinstance(reliability, Mapping) and "before" in reliability:
        from vitkit.report.plots import render_reliability

        png = _redraw(lambda: render_reliability(reliability["before"], reliability.get("after"),
                                                 fmt.number(c.get("temperature"))))
    lead = ("Probabilities are divided by the temperature before they are reported; a "
            "smaller calibration error means a 90% answer is right about 90% of the time.")
    body = _kv(rows, "calibration-table") + _plot(
        "reliability", png, "Reliability diagram: accuracy per confidence bin, before and "
        "after temperature scaling")
    return _section("calibration", "Calibration", body, lead)


def _ood(run: RunInputs) -> str:
    o = run.trust.ood
    if o is None:
        return _section("ood", "Out-of-distribution", _absent(run, OOD, "ood"))
    accept = next((o[k] for k in ("accept_rate_val", "val_accept_rate", "accept_rate")
                   if k in o), None)
    rows = [
        ("Score", _OOD_METHOD_WORDS.get(str(o.get("method")), str(o.get("method") or
                                                                  fmt.MISSING))),
        ("Threshold", fmt.decimal(o.get("threshold"), 4) + (
            " (rough: set on few validation images)" if o.get("rough_threshold") else "")),
        ("Validation images accepted", f"{fmt.percent(accept)} (the target was "
         f"{fmt.percent(o.get('accept'))})" if o.get("accept") is not None
         else fmt.percent(accept)),
        ("Fitted on", f"{fmt.integer(o.get('n_train'))} training images, threshold set on "
         f"{fmt.integer(o.get('n_val'))} validation images" if "n_train" in o else fmt.MISSING),
    ]
    if o.get("expected_ood_share") is not None:
        rows.append(("In production", f"about {fmt.percent(o['expected_ood_share'])} of images "
                     "like the training data will still be answered unknown"))
    body = _kv(rows, "ood-table") + _method_table(o.get("methods"))
    lead = ("Images scoring above the threshold are answered as <em>unknown</em> instead of "
            "being forced into a class.")
    return _section("ood", "Out-of-distribution", body, lead)


_OOD_METHOD_WORDS = {
    "knn": "knn: distance to the nearest training images' features",
    "mahalanobis": "mahalanobis: distance to the class means of the features",
    "mahalanobis_norm": "mahalanobis_norm: distance to the class means of normalised features",
    "relative_mahalanobis": "relative_mahalanobis: class distance minus background distance",
    "msp": "msp: the model's own top probability",
    "energy": "energy: log-sum-exp of the logits",
    "vim": "vim: features off the main subspace, plus energy",
}


def _method_table(methods: object) -> str:
    """The per-method comparison of ood.json (``{name: {...}}`` or ``[{method, ...}]``)."""
    if isinstance(methods, Mapping):
        entries = [(str(k), v) for k, v in methods.items() if isinstance(v, Mapping)]
    elif isinstance(methods, list):
        entries = [(str(m.get("method") or m.get("name") or i), m)
                   for i, m in enumerate(methods) if isinstance(m, Mapping)]
    else:
        return ""
    columns: list[str] = []
    for _, values in entries:
        columns += [k for k, v in values.items()
                    if k not in ("method", "name") and _is_scalar(v) and k not in columns]
    if not entries or not columns:
        return ""
    rows = [[name, *(_scalar(k, values.get(k)) for k in columns)] for name, values in entries]
    head = ["Method", *(k.replace("_", " ") for k in columns)]
    return _table("ood-methods", "Scores compared", head, rows)


def _is_scalar(value: object) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _scalar(key: str, value: object) -> str:
    if isinstance(value, (bool, str)):
        return str(value)
    rate_like = any(w in key.lower() for w in ("rate", "auroc", "fpr", "tpr", "accuracy",
                                               "accept", "aupr"))
    if rate_like:
        return fmt.percent(value)
    x = fmt.number(value)
    if x is None:
        return fmt.MISSING
    return fmt.integer(x) if float(x).is_integer() and abs(x) >= 1 else fmt.decimal(x, 4)


def _explanations(run: RunInputs) -> str:
    items = run.trust.explanations
    if items is None:
        return _section("explanations", "Explanations",
                        _absent(run, EXPLANATIONS, "explanations"))
    entries = [e for e in items if isinstance(e, Mapping) and e.get("overlay")]
    if not entries:
        return _section("explanations", "Explanations", '<p class="absent">'
                        f"<code>{_e(EXPLANATIONS)}</code> lists no explained image.</p>")
    shown = entries[:MAX_EXPLANATIONS]
    methods = sorted({str(e.get("method")) for e in shown if e.get("method")})
    meaning = ("warm colours mark the regions that raised the score of the explained class"
               if any(m.startswith("gradcam") for m in methods) else
               "warm colours mark the patches the class token drew most information from "
               "(class-agnostic)")
    if len(methods) > 1:
        meaning = ("Grad-CAM: regions that raised the explained class's score; rollout and "
                   "attn-last: patches the class token drew most from")
    lead = (f"Where the model looked ({', '.join(methods) or 'heat map'}): {meaning}. "
            f"{fmt.integer(len(shown))} of {fmt.integer(len(entries))} images shown.")
    folder = run.run_dir / EXPLANATIONS_DIR
    figures = "".join(_explained(e, folder, run.run_dir) for e in shown)
    return _section("explanations", "Explanations",
                    f'<div class="grid" id="explanation-grid">{figures}</div>', _e(lead))


def _explained(e: Mapping[str, object], folder: Path, run_dir: Path) -> str:
    overlay = resolve_image(str(e["overlay"]), [folder, run_dir])
    visual = thumbnail_html(overlay, f"explanation of {Path(str(e.get('path', ''))).name}",
                            "overlay")
    pred, true = str(e.get("label", fmt.MISSING)), e.get("true")
    verdict, badge = "neutral", ""
    if true is not None:
        verdict = "correct" if str(true) == pred else "wrong"
        badge = f'<span class="verdict">{"✓ correct" if verdict == "correct" else "✗ wrong"}</span>'
    lines = [badge]
    if true is not None:
        lines.append(f'<span class="line"><span class="k">true</span> {_e(true)}</span>')
    lines.append(f'<span class="line"><span class="k">pred</span> {_e(pred)} '
                 f'<span class="score">{_e(fmt.percent(e.get("score")))}</span></span>')
    target = e.get("class")
    if target is not None and str(target) != pred:
        lines.append(f'<span class="line"><span class="k">map</span> {_e(target)}</span>')
    lines.append(f'<span class="path">{_e(Path(str(e.get("path", ""))).name)}</span>')
    return (f'<figure class="prediction {verdict}" title="{_e(e.get("path", ""))}">'
            f'<div class="thumb">{visual}</div><figcaption>{"".join(lines)}</figcaption>'
            "</figure>")


def _feature_map(run: RunInputs) -> str:
    record = run.trust.feature_map
    png = run.trust.feature_map_png
    if record is None and png is None:
        return _section("feature-map", "Feature map", _absent(run, FEATURE_MAP, "feature_map"))
    record = record or {}
    if png is None:
        png = _redraw(lambda: _feature_map_png(record))
    parts = []
    if record:
        purity = fmt.number(record.get("knn_purity"))
        wrong = sum(str(t) != str(p) for t, p in
                    zip(record.get("labels") or [], record.get("predictions") or [],
                        strict=False))
        text = (f"{record.get('method') or 't-SNE'} of {fmt.integer(record.get('n'))} of "
                f"{fmt.integer(record.get('n_total'))} validation images' features "
                f"(perplexity {fmt.decimal(record.get('perplexity'), 1)}), one colour per "
                f"true class; {fmt.integer(wrong)} misclassified images are ringed in red.")
        if purity is not None:
            text += (f" {fmt.percent(purity)} of each image's 5 nearest neighbours on the map "
                     "share its class.")
        parts.append(f'<p class="lead" id="feature-map-summary">{_e(text)}</p>')
    if png is not None:
        parts.append(_plot("feature-map", png, "t-SNE map of validation features coloured "
                                               "by class"))
    else:
        parts.append('<p class="absent"><code>feature_map.png</code> not found and the map '
                     "cannot be redrawn from <code>feature_map.json</code>.</p>")
    lead = ("Images the model sees alike sit close together: well-separated islands mean "
            "the classes are easy to tell apart; mixed regions are where mistakes happen.")
    return _section("feature-map", "Feature map", "\n".join(parts), lead)


def _feature_map_png(record: Mapping[str, Any]) -> bytes:
    from vitkit.report.feature_map import FeatureMap, render_feature_map

    classes = [str(c) for c in record["classes"]]
    index = {name: i for i, name in enumerate(classes)}
    points = np.asarray(record["points"], dtype=np.float32).reshape(-1, 2)
    targets = np.array([index[str(t)] for t in record["labels"]])
    preds = np.array([index[str(p)] for p in record["predictions"]])
    if not len(points) == len(targets) == len(preds) or not len(points):
        raise ValueError("feature_map.json points and labels differ in length")
    return render_feature_map(FeatureMap(
        points=points, targets=targets, predictions=preds, indices=np.arange(len(points)),
        perplexity=float(record.get("perplexity") or 0.0), n_total=len(points),
        knn_purity=float("nan"), seed=0), classes)


def _robustness(run: RunInputs) -> str:
    r = run.trust.robustness
    if r is None:
        return _section("robustness", "Robustness", _absent(run, ROBUSTNESS, "robustness"))
    corruptions = [c for c in r.get("corruptions") or [] if isinstance(c, Mapping)]
    attacks = [a for a in r.get("adversarial") or [] if isinstance(a, Mapping)]
    lead = (f"Accuracy of {_e(r.get('variant') or 'the model')} on "
            f"{_e(fmt.integer(r.get('n')))} images, clean: "
            f"<strong id=\"clean-accuracy\">{_e(fmt.percent(r.get('clean_accuracy')))}</strong>"
            "; drops are in percentage points.")
    parts = []
    png = run.trust.robustness_png
    if png is None and (corruptions or attacks):
        from vitkit.report.plots import render_robustness

        png = _redraw(lambda: render_robustness(r))
    parts.append(_plot("robustness-plot", png, "Accuracy against corruption severity and "
                                               "attack strength"))
    if corruptions:
        parts.append(_table(
            "corruptions", "Corruptions", ["Corruption", "Severity", "Accuracy", "Drop"],
            [[str(c.get("name", fmt.MISSING)), _severity(c.get("severity")),
              fmt.percent(c.get("accuracy")), _points(c.get("drop"))] for c in corruptions]))
    if attacks:
        parts.append(_table(
            "adversarial", "Adversarial attacks (ε in 1/255 of the pixel range)",
            ["Attack", "ε", "Accuracy", "Drop", "Crafted on"],
            [[str(a.get("attack", fmt.MISSING)).upper(), _severity(a.get("epsilon")),
              fmt.percent(a.get("accuracy")), _points(a.get("drop")),
              "fp32 model (transferred)" if a.get("transferred") else "this model"]
             for a in attacks]))
    if not corruptions and not attacks:
        parts.append('<p class="absent">robustness.json lists no corruption or attack.</p>')
    notes = [str(n) for n in r.get("notes") or []]
    parts += [f'<p class="note">{_e(n)}</p>' for n in notes]
    return _section("robustness", "Robustness", "\n".join(p for p in parts if p), lead)


def _severity(value: object) -> str:
    x = fmt.number(value)
    return fmt.MISSING if x is None else f"{x:g}"


def _fairness(run: RunInputs) -> str:
    f = run.trust.fairness
    if f is None:
        return _section("fairness", "Fairness", _absent(run, FAIRNESS, "fairness"))
    groups = {str(k): v for k, v in _mapping(f.get("groups")).items() if isinstance(v, Mapping)}
    positive = f.get("positive_class")
    eo, which = _mapping(f.get("equalized_odds_gap")), "largest over classes"
    if positive and f.get("positive_class_gaps"):
        eo, which = _mapping(f.get("positive_class_gaps")), f"for {positive}"
    rows = [
        ("Demographic parity difference", fmt.percent(f.get("demographic_parity_difference"))),
        (f"Equalized-odds gap, TPR ({which})", fmt.percent(eo.get("tpr"))),
        (f"Equalized-odds gap, FPR ({which})", fmt.percent(eo.get("fpr"))),
        ("Accuracy difference", fmt.percent(f.get("accuracy_difference"))),
        ("Worst group", str(f.get("worst_group") or fmt.MISSING)),
        ("Positive class", str(positive) if positive else fmt.MISSING),
    ]
    classes = _fairness_classes(groups, positive)
    head = ["Group", "Images", "Accuracy"]
    if positive:
        head += [f"Selects {positive}", f"TPR {positive}", f"FPR {positive}"]
    else:
        head += [f"Selects {c}" for c in classes]
    table_rows = []
    for name, g in groups.items():
        label = name + (" (too few to judge)" if g.get("too_few") else "")
        row = [label, fmt.integer(g.get("n")), fmt.percent(g.get("accuracy"))]
        if positive:
            row += [fmt.percent(_get(g, key, str(positive)))
                    for key in ("selection_rate", "tpr", "fpr")]
        else:
            row += [fmt.percent(_get(g, "selection_rate", c)) for c in classes]
        table_rows.append(row)
    attribute = str(f.get("attribute") or "group")
    lead = (f"Predictions compared across groups of <strong>{_e(attribute)}</strong> "
            f"({_e(fmt.integer(f.get('n')))} images). Gaps are the largest difference between "
            f"groups with at least {_e(fmt.integer(f.get('min_group_size')))} images; 0% means "
            "every group is treated alike.")
    parts = [_kv(rows, "fairness-summary"),
             _table("fairness-groups", f"Per {attribute}", head, table_rows)]
    unmatched = _mapping(f.get("unmatched"))
    if fmt.number(unmatched.get("rows")) or fmt.number(unmatched.get("images")):
        parts.append(f'<p class="note" id="fairness-unmatched">'
                     f"{_e(fmt.integer(unmatched.get('rows')))} CSV rows matched no image; "
                     f"{_e(fmt.integer(unmatched.get('images')))} evaluated images had no "
                     "group and were left out.</p>")
    return _section("fairness", "Fairness", "\n".join(parts), lead)


def _fairness_classes(groups: Mapping[str, Mapping], positive: object) -> list[str]:
    if positive:
        return [str(positive)]
    classes: list[str] = []
    for g in groups.values():
        rates = g.get("selection_rate")
        if isinstance(rates, Mapping):
            classes += [str(c) for c in rates if str(c) not in classes]
    return classes[:_MAX_CLASS_COLUMNS]


def _get(group: Mapping[str, object], key: str, label: str) -> object:
    return _mapping(group.get(key)).get(label)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
