"""The report's domain-adaptation section, from ``domain_adaptation.json`` when the run has one
(`vitkit train … --domain-adapt dann`; see :mod:`vitkit.workflows.domain`)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitkit.report import _format as fmt

RECORD = "domain_adaptation.json"


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's domain-adaptation record, or None when absent or unreadable."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def render_domain_adaptation(run_dir: Path) -> str:
    """A card comparing the source-only and the adapted model on the target images; empty
    when the run did no domain adaptation."""
    record = read_record(run_dir)
    if record is None:
        return ""
    shift = _mapping(record.get("shift"))
    source_only = record.get("source_only")
    rows = []
    if isinstance(source_only, Mapping):
        rows.append(_row("source-only", source_only.get("source_accuracy"),
                         source_only.get("target_accuracy"), shift.get("before"), None))
    rows.append(_row(str(record.get("method", "adapted")).upper(), record.get("source_accuracy"),
                     record.get("target_accuracy"), shift.get("after"),
                     record.get("domain_accuracy")))
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in (
        "Model", "Source accuracy", "Target accuracy", "Target flagged OOD",
        "Feature MMD² (p)", "Domain probe", "Domain head"))
    table = (f'<div class="table-wrap"><table class="data numeric" id="domain-table">'
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    settings = _mapping(record.get("settings"))
    facts = (
        f"Target images <code>{_e(record.get('target'))}</code>: "
        f"{fmt.integer(record.get('target_images'))} adapted to, "
        f"{fmt.integer(record.get('target_held_out'))} held out to measure, "
        f"{fmt.integer(record.get('target_skipped'))} skipped"
        + (f"; labelled <code>{_e(record.get('target_eval'))}</code> "
           f"({fmt.integer(record.get('target_eval_images'))} images)"
           if record.get("target_eval") else "; no labelled target images (--target-eval)")
        + f". Domain loss weight {_e(settings.get('weight'))}, reversal strength up to "
        f"{_e(settings.get('lambda_max'))}, domain head at {_e(settings.get('head_lr_scale'))}x "
        "the stage's learning rate.")
    lead = ("Target accuracy is measured on labelled target images never trained on. The "
            "other columns compare the held-out target images with the source's validation "
            "images: the share the OOD detector calls unknown, the feature MMD², and how well a "
            "fresh linear probe (and, after adaptation, the trained domain head) tells the two "
            "domains apart: 50% means it cannot.")
    return (f'<section class="card" id="domain-adaptation">\n<h2>Domain adaptation</h2>\n'
            f'<p class="lead">{lead}</p>\n{table}\n<p>{facts}</p>\n</section>')


def _row(name: str, source_accuracy: Any, target_accuracy: Any, shift: Any,
         domain_accuracy: Any) -> str:
    shift = _mapping(shift)
    mmd = fmt.decimal(shift.get("mmd"), 4)
    if fmt.number(shift.get("mmd_p_value")) is not None:
        mmd += f" ({fmt.decimal(shift.get('mmd_p_value'), 3)})"
    cells = (name, fmt.percent(source_accuracy), fmt.percent(target_accuracy),
             fmt.percent(shift.get("ood_share")), mmd,
             fmt.percent(shift.get("domain_probe_accuracy")), fmt.percent(domain_accuracy))
    return "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
