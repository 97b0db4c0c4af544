"""The bench page: every variant in one table and an accuracy-vs-latency scatter plot.

Reads the ``vitkit bench --json`` document (a mapping), so the page never disagrees with it.
Self-contained like the other reports: the plot is embedded as a ``data:`` URI.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from vitkit.atomic import write_text_atomic
from vitkit.report import _format as fmt
from vitkit.report._images import data_uri
from vitkit.report._style import CSS
from vitkit.version import __version__

REPORT_FILE = "bench.html"


def write_bench_report(out: Path, bench: Mapping[str, Any]) -> Path:
    """Writes the page to ``out`` (a file path) atomically and returns it."""
    variants = sorted(bench.get("variants") or [], key=_latency_key)
    body = "\n".join([_header(bench), _table(variants, bench.get("batches") or []),
                      _scatter(variants), _footer()])
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>vitkit bench</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main class=\"page\">\n{body}\n</main>\n</body>\n</html>\n"
    )
    return write_text_atomic(Path(out), page)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _latency_key(v: Mapping[str, Any]) -> tuple[bool, float]:
    p50 = fmt.number((v.get("latency_ms") or {}).get("p50"))
    return (p50 is None, p50 or 0.0)


def _header(bench: Mapping[str, Any]) -> str:
    reference = bench.get("reference")
    accuracy = (f"accuracy on {_e(reference)}" if reference else
                _e(bench.get("reference_note") or "accuracy unknown: no labelled images"))
    facts = [f"bundle <code>{_e(bench.get('bundle', '?'))}</code>",
             f"{_e(bench.get('threads'))} threads", f"torch {_e(bench.get('torch_version', '?'))}",
             accuracy]
    return ("<header class=\"masthead\">\n<div class=\"brand\">vitkit · bench</div>\n"
            "<h1>Variants side by side</h1>\n"
            f"<p class=\"facts\">{' · '.join(facts)}</p>\n</header>")


def _section(section_id: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f"<p class=\"lead\">{lead}</p>" if lead else ""
    return (f"<section class=\"card\" id=\"{section_id}\">\n<h2>{_e(title)}</h2>\n{lead_html}\n"
            f"{body}\n</section>")


def _table(variants: Sequence[Mapping[str, Any]], batches: Sequence[int]) -> str:
    heads = ["Variant", "Runtime", "Precision", "Size MB", "Accuracy", "Drop (pt)", "Agreement",
             "p50 ms", "p95 ms", *[f"b{b} img/s" for b in batches], "Peak RSS MB", "Load s"]
    rows = [_row(v, batches, len(heads)) for v in variants]
    table = ("<div class=\"table-wrap\"><table class=\"data numeric\" id=\"bench\"><thead><tr>"
             + "".join(f"<th>{_e(h)}</th>" for h in heads)
             + f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    return _section("bench-section", "Variants", table,
                    "Fastest first (batch-1 median latency). Drop and agreement are measured "
                    "against torch fp32 on the same images; — means unknown.")


def _row(v: Mapping[str, Any], batches: Sequence[int], width: int) -> str:
    lead = f"<td>{_e(v.get('name'))}</td><td>{_e(v.get('runtime'))}</td>" \
           f"<td>{_e(v.get('precision'))}</td>"
    if v.get("status", "ok") != "ok":
        install = f" (pip install '{_e(v['install'])}')" if v.get("install") else ""
        return (f"<tr class=\"skipped\">{lead}<td colspan=\"{width - 3}\">{_e(v.get('status'))}:"
                f" {_e(v.get('reason'))}{install}</td></tr>")
    latency = v.get("latency_ms") or {}
    throughput = v.get("throughput") or {}
    cells = [fmt.decimal(v.get("size_mb"), 2), fmt.percent(v.get("accuracy")),
             fmt.decimal(v.get("accuracy_drop"), 2), fmt.percent(v.get("agreement")),
             fmt.decimal(latency.get("p50"), 2), fmt.decimal(latency.get("p95"), 2),
             *[fmt.decimal(throughput.get(str(b)), 1) for b in batches],
             fmt.decimal(v.get("peak_rss_mb"), 0), fmt.decimal(v.get("load_s"), 2)]
    return f"<tr>{lead}" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _scatter(variants: Sequence[Mapping[str, Any]]) -> str:
    points = [(v["name"], fmt.number((v.get("latency_ms") or {}).get("p50")),
               fmt.number(v.get("accuracy"))) for v in variants]
    known = [(n, x, y) for n, x, y in points if x is not None and y is not None]
    if not known:
        return _section("scatter-section", "Accuracy vs latency",
                        "<p id=\"scatter-missing\">No labelled images, so accuracy is unknown "
                        "and there is nothing to plot. Pass <code>--data</code> with "
                        "validation images.</p>")
    uri = data_uri(_render_scatter(known), "image/png")
    return _section("scatter-section", "Accuracy vs latency",
                    f"<img class=\"plot\" id=\"scatter\" src=\"{uri}\" "
                    "alt=\"accuracy against batch-1 latency, one point per variant\">",
                    "Up and to the left is better.")


def _render_scatter(points: Sequence[tuple[str, float, float]]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    xs, ys = [p[1] for p in points], [100 * p[2] for p in points]
    ax.scatter(xs, ys, color="#1f6feb", zorder=3)
    # One slow variant (say torch fp16 on a CPU, 50x the others) would squash every other
    # point into one blob on a linear axis: a log axis keeps ratios readable.
    log_axis = min(xs) > 0 and max(xs) / min(xs) > 8
    if log_axis:
        ax.set_xscale("log")
    for (name, x, y), dy in zip(sorted(zip([p[0] for p in points], xs, ys, strict=True),
                                       key=lambda p: (p[2], p[1])),
                                _label_offsets(len(points)), strict=True):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, dy), fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "#8c959f", "lw": 0.6})
    ax.set_xlabel("batch-1 latency, median (ms)" + (", log scale" if log_axis else ""))
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, facecolor="white")
    return buffer.getvalue()


def _label_offsets(n: int) -> list[int]:
    """Vertical label offsets in points that alternate, so labels of points with nearly the
    same accuracy (usual: most variants keep the model's accuracy) do not print over each
    other."""
    return [(-1) ** i * (4 + 9 * (i // 2 % 4)) for i in range(n)]


def _footer() -> str:
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    return f"<footer class=\"footer\">Generated by vitkit {_e(__version__)} on {_e(now)}.</footer>"
