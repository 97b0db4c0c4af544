"""The report's continual-learning section, from ``continual.json`` when the run has one
(`vitkit train NEW --continue-from BUNDLE`; see :mod:`vitkit.workflows.continual`)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitkit.report import _format as fmt

RECORD = "continual.json"
RUN_NAMES = {"ours": "continued (rehearsal)", "naive": "naive fine-tuning",
             "joint": "joint retraining"}


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's continual-learning record, or None when absent or unreadable."""
    try:
        record = json.loads((Path(run_dir) / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def render_continual(run_dir: Path) -> str:
    """A table of old-class accuracy before and after, new-class and average accuracy,
    backward transfer and forgetting, per run; empty when the run continued nothing."""
    record = read_record(run_dir)
    if record is None:
        return ""
    figures = record.get("figures")
    figures = figures if isinstance(figures, Mapping) else {}
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in (
        "Run", "Old classes before", "Old classes after", "New classes", "Average",
        "Backward transfer", "Forgetting", "Training time"))
    rows = []
    for key, values in figures.items():
        if not isinstance(values, Mapping):
            continue
        name = RUN_NAMES.get(str(key), str(key))
        if key == "ours" and record.get("distill_old"):
            name += " + LwF"
        cells = (name, fmt.percent(values.get("old_accuracy_before")),
                 fmt.percent(values.get("old_accuracy")), fmt.percent(values.get("new_accuracy")),
                 fmt.percent(values.get("average_accuracy")),
                 _points(values.get("backward_transfer")), _points(values.get("forgetting")),
                 f"{fmt.decimal(values.get('train_seconds'), 0)} s")
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    table = (f'<div class="table-wrap"><table class="data numeric" id="continual-table">'
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    memory = record.get("memory")
    memory = memory if isinstance(memory, Mapping) else {}
    old = ", ".join(map(str, record.get("old_classes") or []))
    new = ", ".join(map(str, record.get("new_classes") or [])) or "none"
    facts = (f"Continued from <code>{_e(record.get('continued_from'))}</code>. Old classes: "
             f"{_e(old)}; new: {_e(new)}. Replay ratio {_e(record.get('replay_ratio'))}; the "
             f"bundle now keeps {fmt.integer(memory.get('images'))} exemplars "
             f"(class-balanced). Old classes measured on {_e(record.get('old_eval'))} "
             f"({fmt.integer(record.get('old_eval_images'))} images).")
    lead = ("How much of the old classes the continued model kept while it learned the new "
            "ones, beside fine-tuning without rehearsal (naive) and, when asked, retraining on "
            "all the data (joint). Backward transfer is old-class accuracy after minus "
            "before; forgetting is the drop (0 when none). The epoch was chosen on these "
            "validation images.")
    return (f'<section class="card" id="continual">\n<h2>Continual learning</h2>\n'
            f'<p class="lead">{lead}</p>\n{table}\n<p>{facts}</p>\n</section>')


def _points(value: object) -> str:
    number = fmt.number(value)
    return fmt.MISSING if number is None else f"{number * 100:+.1f} pts"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
