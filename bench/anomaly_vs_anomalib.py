"""vitkit's anomaly defaults side by side with anomalib's PatchCore and PaDiM, in one run.

Per set, one after the other on the same machine:

1. vitkit: ``anomaly fit`` with every setting left at its default (plus, with ``--auto``,
   a second row fitted with ``--auto``), then the bundle loaded and every test image scored
   with its map at batch 8. The time is the wall time of both in this process: reading and
   checking the files, decoding, features, memory bank, out-of-fold threshold, loading the
   bundle, scoring. The metrics come from ``anomaly eval`` afterwards, not timed (nor are
   they in anomalib's time).
2. anomalib 2.7: ``bench/anomalib_reference.py`` for PatchCore and for PaDiM, each in its own
   process of the throw-away venv (``bench/README-anomalib.md``). Its time is decoding and
   resizing every image once + fit + scoring the test set at batch 8 (its batch-1 pass is
   not counted).

    .venv/bin/python bench/anomaly_vs_anomalib.py [--sets deeppcb,BDP,FLR,textile]
        [--anomalib-python /tmp/anomalib-venv/bin/python] [--auto] [--jsonl FILE]

Sets: deeppcb and both piped-paper sets from ../shared/datasets, and the demo's textile data
laid out as MVTec (200 nominal images to learn; 300 nominal, 100 local and 100 global defects
to test; no masks, so no pixel AUROC). One JSON line per set, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from anomaly_threshold import SETS, emit, textile_as_mvtec  # type: ignore[import-not-found]

from vitkit.anomaly.config import AnomalyFitConfig
from vitkit.anomaly.detector import load_anomaly_detector
from vitkit.data.mvtec import mvtec_test_images
from vitkit.workflows.anomaly import run_eval, run_fit

REFERENCE = Path(__file__).resolve().parent / "anomalib_reference.py"


def vitkit_row(data: Path, out: Path, auto: bool) -> dict[str, Any]:
    start = time.perf_counter()
    fit = run_fit(AnomalyFitConfig(data=str(data), out=str(out), auto=auto), progress=False)
    fitted = time.perf_counter()
    detector = load_anomaly_detector(out, "cpu")
    for _ in detector.score_paths([t.path for t in mvtec_test_images(data)], batch_size=8,
                                  with_maps=True):
        pass
    done = time.perf_counter()
    # The metrics (pixel AUROC and PRO over every pixel) are not part of the timed test, as
    # they are not in anomalib's figure.
    result = run_eval(out, data, report=False, progress=False)
    return {"tool": "vitkit --auto" if auto else "vitkit default",
            "image_auroc": result["image_auroc"], "pixel_auroc": result.get("pixel_auroc"),
            "fit_s": round(fitted - start, 2), "test_s": round(done - fitted, 2),
            "total_s": round(done - start, 2),
            "settings": fit.details.get("auto", {}).get("chosen")}


def anomalib_row(python: str, data: Path, method: str, threads: int) -> dict[str, Any]:
    command = [python, str(REFERENCE), "--data", str(data), "--method", method, "--size", "224",
               "--threads", str(threads), "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if completed.returncode != 0:
        sys.exit(f"anomalib {method} on {data} failed:\n{completed.stderr[-3000:]}")
    measured = json.loads(completed.stdout)
    test_s = measured["score_ms_per_image"]["batch8"] * measured["n_test"] / 1000
    return {"tool": f"anomalib {method}", "image_auroc": measured["image_auroc"],
            "pixel_auroc": measured["pixel_auroc"],
            "fit_s": round(measured["load_s"] + measured["fit_s"], 2), "test_s": round(test_s, 2),
            "total_s": round(measured["load_s"] + measured["fit_s"] + test_s, 2),
            "load_avg_1min": measured["load_avg_1min"]}


def _auroc(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def table(lines: list[dict[str, Any]]) -> str:
    rows = ["| set | tool | image AUROC | pixel AUROC | fit + test, s | anomalib time / vitkit's |",
            "|---|---|---|---|---|---|"]
    for line in lines:
        default = next(r for r in line["rows"] if r["tool"] == "vitkit default")
        for row in line["rows"]:
            ratio = ("" if row["tool"].startswith("vitkit")
                     else f"{row['total_s'] / default['total_s']:.1f}x")
            rows.append(f"| {line['set']} | {row['tool']} | {_auroc(row['image_auroc'])} | "
                        f"{_auroc(row['pixel_auroc'])} | {row['total_s']:.1f} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="deeppcb,BDP,FLR,textile")
    parser.add_argument("--anomalib-python", default="/tmp/anomalib-venv/bin/python")
    parser.add_argument("--methods", default="patchcore,padim", help="anomalib methods to run")
    parser.add_argument("--auto", action="store_true", help="add a row fitted with --auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vitkit-vs-anomalib-"))
    lines = []
    try:
        for name in args.sets.split(","):
            data = textile_as_mvtec(work / "textile", 200) if name == "textile" else SETS[name]
            rows = [vitkit_row(data, work / f"{name}-default", auto=False)]
            if args.auto:
                rows.append(vitkit_row(data, work / f"{name}-auto", auto=True))
            rows += [anomalib_row(args.anomalib_python, data, method, args.threads)
                     for method in args.methods.split(",")]
            line = {"set": name, "load_avg_1min": os.getloadavg()[0], "rows": rows}
            lines.append(line)
            emit(line, args.jsonl)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(lines))


if __name__ == "__main__":
    main()
