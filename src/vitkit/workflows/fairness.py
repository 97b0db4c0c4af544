"""`vitkit eval --groups CSV`: the evaluation's predictions compared across groups of images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from vitkit.bundle import write_json_atomic
from vitkit.console import stderr_console
from vitkit.data import scan
from vitkit.data.groups import DEFAULT_GROUP_COLUMN, match_groups, read_group_csv
from vitkit.errors import DataError
from vitkit.evaluate.classification import Evaluation
from vitkit.evaluate.fairness import DEFAULT_MIN_GROUP_SIZE, group_fairness

FAIRNESS_FILE = "fairness.json"
_EXAMPLES = 5


def evaluation_fairness(evaluation: Evaluation, labels: list[str], data: str, groups_csv: Path,
                        group_column: str = DEFAULT_GROUP_COLUMN,
                        min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> dict[str, Any]:
    """The ``fairness`` part of ``eval --json`` for an evaluation of the images under ``data``.

    Rows are matched against every image of ``data`` (all splits), so a row naming a training
    image is counted as "not evaluated" rather than "unmatched".

    Raises:
        DataError: The CSV is malformed, or names none of the evaluated images.
    """
    attribute, rows = read_group_csv(groups_csv, group_column)
    scanned = scan(data)
    root = scanned.root.parent if scanned.root.is_file() else scanned.root
    evaluated = [Path(s.path) for s in evaluation.samples]
    known = {Path(s.path) for s in scanned.samples} | set(evaluated)
    match = match_groups(rows, sorted(known), root, groups_csv)
    chosen = [i for i, path in enumerate(evaluated) if path in match.groups]
    if not chosen:
        shown = ", ".join(row.path for row in rows[:3])
        raise DataError(
            f"{groups_csv} names none of the {len(evaluated)} evaluated images of {data} (its "
            f"first rows: {shown}). Paths are matched as written, relative to the data folder, "
            "relative to the CSV's folder, or by file name when it is unique.")
    evaluated_set = set(evaluated)
    without_group = [path for path in evaluated if path not in match.groups]
    not_evaluated = [path for path in match.groups if path not in evaluated_set]
    predictions = evaluation.probs.argmax(1)
    report = group_fairness(
        evaluation.targets[chosen], predictions[chosen],
        [match.groups[evaluated[i]] for i in chosen], labels, min_group_size)
    return {
        "attribute": attribute,
        "csv": str(groups_csv),
        "n": len(chosen),
        **report.to_dict(),
        "unmatched": {
            "rows": len(match.unmatched_rows),
            "ambiguous_rows": len(match.ambiguous_rows),
            "images": len(without_group),
            "rows_not_evaluated": len(not_evaluated),
            "row_examples": [f"line {r.line}: {r.path}" for r in
                             match.unmatched_rows[:_EXAMPLES]],
            "image_examples": [str(p) for p in without_group[:_EXAMPLES]],
        },
    }


def write_fairness(out: Path, fairness: dict[str, Any]) -> Path:
    """Writes ``out/fairness.json`` (what the run report's Fairness section shows)."""
    path = Path(out) / FAIRNESS_FILE
    write_json_atomic(path, fairness)
    return path


def print_fairness(fairness: dict[str, Any]) -> None:
    """A per-group table and the gaps, on stderr."""
    groups = fairness["groups"]
    labels = list(next(iter(groups.values()))["selection_rate"]) if groups else []
    positive = fairness.get("positive_class")
    # Two classes: the positive class's rates say it all; more: selection rate per class.
    columns = ([("selection_rate", positive, f"selects {positive}"),
                ("tpr", positive, f"TPR {positive}"), ("fpr", positive, f"FPR {positive}")]
               if positive else
               [("selection_rate", label, f"selects {label}") for label in labels[:6]])
    table = Table(title=f"fairness by {fairness['attribute']} (n={fairness['n']})")
    for col in ("group", "n", "accuracy", *(title for _, _, title in columns)):
        table.add_column(col, justify="left" if col == "group" else "right")
    for name, group in groups.items():
        note = " [yellow](too few)[/]" if group["too_few"] else ""
        table.add_row(f"{name}{note}", str(group["n"]), f"{group['accuracy']:.3f}",
                      *(_num(group[key][label]) for key, label, _ in columns))
    stderr_console.print(table)
    gaps, which = fairness["equalized_odds_gap"], "largest over classes"
    if positive:
        gaps, which = fairness["positive_class_gaps"], str(positive)
    stderr_console.print(
        f"demographic parity difference {_num(fairness['demographic_parity_difference'])}  "
        f"equalized-odds gap ({which}) TPR {_num(gaps['tpr'])} FPR {_num(gaps['fpr'])}  "
        f"worst group {fairness['worst_group'] or '—'}")
    if len(fairness["compared"]) < 2:
        stderr_console.print(f"[yellow]fewer than two groups have {fairness['min_group_size']} "
                             "or more images: no gaps to measure (--min-group-size)[/]")
    unmatched = fairness["unmatched"]
    if unmatched["rows"] or unmatched["images"]:
        stderr_console.print(
            f"[yellow]{unmatched['rows']} CSV row(s) matched no image"
            + (f" ({unmatched['ambiguous_rows']} by an ambiguous file name)"
               if unmatched["ambiguous_rows"] else "")
            + f"; {unmatched['images']} evaluated image(s) have no group and are left out[/]")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
