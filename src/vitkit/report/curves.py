"""The training report's "Learning curve" section: what the epoch history says, and with
``--compare-scratch`` what the pretrained weights were worth.

The diagnostics come from ``summary.json`` (``learning_curve``, written at the end of
training) or, for a run without them (interrupted, or older), are computed from
``metrics.csv`` with the same functions (:mod:`vitkit.evaluate.curves`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vitkit.evaluate.curves import CONVERGED_SHARE, GAP_GROWTH, diagnose
from vitkit.report import _format as fmt
from vitkit.report._inputs import RunInputs
from vitkit.report._page import e, section

SCRATCH_REPORT = "scratch/report.html"


def render_learning_curve(run: RunInputs) -> str:
    """The section, or an empty string when the run has no epochs to judge."""
    summary = run.summary or {}
    stored = summary.get("learning_curve")
    curve: Mapping[str, Any] = stored if isinstance(stored, Mapping) and stored else \
        diagnose(run.metrics or []).to_dict()
    if not curve.get("epochs"):
        return ""
    rows = [
        ("Convergence epoch", _epoch(curve.get("convergence_epoch")),
         f"first epoch at {CONVERGED_SHARE:.0%} or more of the best validation accuracy "
         f"({fmt.percent(curve.get('best_val_accuracy'))})"),
        ("Overfitting onset", _epoch(curve.get("overfitting_onset"), "none seen"),
         f"first epoch whose validation-minus-training loss gap grew by more than "
         f"{GAP_GROWTH:.0%} over the previous epoch's (same stage, positive gap)"),
        ("Best minus last", _points(curve.get("best_minus_last")),
         "best validation accuracy minus the last epoch's "
         f"({fmt.percent(curve.get('last_val_accuracy'))})"),
    ]
    body = _kv(rows)
    transfer = summary.get("transfer")
    if isinstance(transfer, Mapping):
        body += _transfer(transfer)
    return section("learning-curve", "Learning curve", body)


def _transfer(transfer: Mapping[str, Any]) -> str:
    rows = [
        ("Pretrained", fmt.percent(transfer.get("pretrained_accuracy")),
         "validation accuracy of this run's bundle"),
        ("From scratch", fmt.percent(transfer.get("scratch_accuracy")),
         "the same recipe from random weights"),
        ("Transfer gain", fmt.decimal(transfer.get("gain"), 3),
         "(pretrained − scratch) / (1 − scratch): the share of the scratch model's errors "
         "the pretrained weights remove"),
    ]
    if fmt.number(transfer.get("test_gain")) is not None:
        rows.append(("Transfer gain (test)", fmt.decimal(transfer.get("test_gain"), 3),
                     f"{fmt.percent(transfer.get('pretrained_test_accuracy'))} vs "
                     f"{fmt.percent(transfer.get('scratch_test_accuracy'))} on the test split"))
    link = f'<p>The scratch run: <a href="{e(SCRATCH_REPORT)}">its report</a>.</p>'
    return f'<h3 id="transfer">Pretrained vs from scratch</h3>{_kv(rows)}{link}'


def _kv(rows: list[tuple[str, str, str]]) -> str:
    cells = "".join(f'<tr><th scope="row">{e(name)}</th><td>{e(value)}</td>'
                    f'<td class="note">{e(note)}</td></tr>' for name, value, note in rows)
    return f'<table class="kv">{cells}</table>'


def _epoch(value: object, absent: str = fmt.MISSING) -> str:
    number = fmt.number(value)
    return absent if number is None else f"epoch {int(number)}"


def _points(value: object) -> str:
    number = fmt.number(value)
    return fmt.MISSING if number is None else f"{100 * number:.1f} points"
