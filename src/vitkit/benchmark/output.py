"""Bench results for people and spreadsheets: flat rows, a CSV file, a rich table."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from vitkit.atomic import write_text_atomic
from vitkit.benchmark.run import BenchResult, VariantResult

UNKNOWN = "n/a"


def flat_row(variant: VariantResult, batches: list[int]) -> dict[str, Any]:
    """One CSV row: latency and throughput spread over columns; ``None`` stays empty."""
    latency = variant.latency
    row: dict[str, Any] = {
        "name": variant.name, "runtime": variant.runtime, "precision": variant.precision,
        "status": variant.status, "size_mb": variant.size_mb, "parameters": variant.parameters,
        "accuracy": variant.accuracy, "accuracy_drop": variant.accuracy_drop,
        "agreement": variant.agreement,
        "latency_mean_ms": latency.mean if latency else None,
        "latency_p50_ms": latency.p50 if latency else None,
        "latency_p95_ms": latency.p95 if latency else None,
    }
    for batch in batches:
        row[f"throughput_b{batch}"] = variant.throughput.get(batch)
    row.update({"peak_rss_mb": variant.peak_rss_mb, "load_s": variant.load_s,
                "tome_r": variant.tome_r, "reason": variant.reason, "install": variant.install})
    return row


def write_csv(result: BenchResult, path: Path) -> Path:
    """Writes one row per variant, fastest first, atomically."""
    rows = [flat_row(v, result.batches) for v in result.by_latency()]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["name"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return write_text_atomic(Path(path), buffer.getvalue())


def bench_table(result: BenchResult) -> Table:
    """A rich table, fastest first; skipped variants last with their reason."""
    accuracy = (f"accuracy on {result.reference}" if result.reference else
                result.reference_note or "accuracy unknown")
    table = Table(title=f"{result.bundle} · {result.threads} threads · {accuracy}")
    columns = ["variant", "MB", "acc", "drop pt", "agree", "p50 ms", "p95 ms",
               *[f"b{b}/s" for b in result.batches], "peak MB", "load s"]
    for col in columns:
        first = col == "variant"
        table.add_column(col, justify="left" if first else "right", no_wrap=first)
    for v in result.by_latency():
        if v.status != "ok":
            hint = f" (pip install '{v.install}')" if v.install else ""
            table.add_row(_name(v, result), f"[yellow]{v.status}[/]: {v.reason}{hint}",
                          *[""] * (len(columns) - 2))
            continue
        assert v.latency is not None
        table.add_row(
            _name(v, result), _num(v.size_mb, 1), _pct(v.accuracy), _num(v.accuracy_drop, 2),
            _pct(v.agreement), _num(v.latency.p50, 2), _num(v.latency.p95, 2),
            *[_num(v.throughput.get(b), 1) for b in result.batches],
            _num(v.peak_rss_mb, 0), _num(v.load_s, 2))
    return table


WIDE_TABLE_COLUMNS = 110
"""Below this terminal width the bench table would wrap every cell: stack instead."""


def bench_stacked(result: BenchResult) -> Group:
    """The bench table for narrow terminals: one block of short lines per variant."""
    accuracy = (f"accuracy on {result.reference}" if result.reference else
                result.reference_note or "accuracy unknown")
    blocks: list[Text] = [Text(f"{result.threads} threads · {accuracy}", style="bold")]
    for v in result.by_latency():
        if v.status != "ok":
            hint = f" (pip install '{v.install}')" if v.install else ""
            blocks.append(Text.assemble((_name(v, result), "bold"), "\n  ", (v.status, "yellow"),
                                        f": {v.reason}{hint}"))
            continue
        assert v.latency is not None
        throughput = "  ".join(f"b{b} {_num(v.throughput.get(b), 1)}/s" for b in result.batches)
        blocks.append(Text.assemble(
            (_name(v, result), "bold"),
            f"\n  accuracy {_pct(v.accuracy)} (drop {_num(v.accuracy_drop, 2)} pt, agreement "
            f"{_pct(v.agreement)}) · {_num(v.size_mb, 1)} MB",
            f"\n  latency p50 {_num(v.latency.p50, 2)} ms, p95 {_num(v.latency.p95, 2)} ms"
            f" · {throughput}",
            f"\n  peak memory {_num(v.peak_rss_mb, 0)} MB · load {_num(v.load_s, 2)} s"))
    return Group(*blocks)


def _name(variant: VariantResult, result: BenchResult) -> str:
    """The variant's name, marked when it is the one the bundle runs by default."""
    return f"{variant.name} (default)" if variant.name == result.default_variant else variant.name


def _num(value: float | None, digits: int) -> str:
    return UNKNOWN if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return UNKNOWN if value is None else f"{100 * value:.1f}%"
