"""Anomaly methods side by side: fit time, score latency, memory bank, image/pixel AUROC.

Runs `vitkit anomaly fit` + `eval` (through the library) for each method and backbone on
MVTec-style data sets and prints one table (and JSON with --json). All figures of a row come
from the same run on the same machine, so compare rows, not absolute numbers across days.

    .venv/bin/python bench/anomaly_bench.py                       # deeppcb + piped_paper
    .venv/bin/python bench/anomaly_bench.py --data ../shared/datasets/deeppcb --runs patchcore
    .venv/bin/python bench/anomaly_bench.py --textile 200         # PatchCore fit on 200 textile

The anomalib reference figures come from bench/anomalib_reference.py (a separate venv).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vitkit.anomaly.config import AnomalyFitConfig
from vitkit.anomaly.detector import load_anomaly_detector
from vitkit.data import load_rgb
from vitkit.data.mvtec import mvtec_test_images
from vitkit.workflows.anomaly import run_eval, run_fit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DEFAULT_DATA = [SHARED / "deeppcb", SHARED / "piped_paper" / "PA_BDP01_TL",
                SHARED / "piped_paper" / "PA_FLR01_TL"]
DEFAULT_RUNS = ["patchmean", "padim:efficientnet_lite0", "patchcore:efficientnet_lite0"]


def score_latency_ms(bundle: Path, paths: list[Path], repeats: int = 3) -> float:
    """Mean batch-1 latency per image (decode excluded, preprocessing and model included)."""
    detector = load_anomaly_detector(bundle, "cpu")
    images = [load_rgb(p)[0] for p in paths]
    detector.raw_scores(images[:1])  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        for image in images:
            detector.raw_scores([image])
    return 1000 * (time.perf_counter() - started) / (repeats * len(images))


def bench_one(data: Path, run: str, work: Path, weights: str, holdout: float) -> dict[str, Any]:
    method, _, model = run.partition(":")
    bundle = work / f"{data.name}-{method}-{model or 'none'}".replace("/", "_")
    config = AnomalyFitConfig(data=str(data), method=method,  # type: ignore[arg-type]
                              model=model or "efficientnet_lite0", weights=weights,
                              out=str(bundle), holdout=holdout)
    fit = run_fit(config, progress=False)
    result = run_eval(bundle, data, report=False, progress=False)
    tests = [t.path for t in mvtec_test_images(data)][:16]
    return {
        "data": data.name, "method": method, "model": model or None,
        "n_fit": fit.n_fit, "fit_s": fit.fit_seconds,
        "finish_s": fit.details.get("finish_seconds"),
        "bank_before": fit.details.get("bank_before"), "bank_after": fit.details.get("bank_after"),
        "score_ms": round(score_latency_ms(bundle, tests), 2),
        "image_auroc": result["image_auroc"], "pixel_auroc": result.get("pixel_auroc"),
        "pro": result.get("pro"), "f1": result["f1"],
    }


def textile_fit(n_images: int, work: Path) -> dict[str, Any]:
    """The issue's speed target: PatchCore fit on N textile images at 224 px, score latency."""
    from vitkit.workflows.demo import textile_root

    nominal = sorted((textile_root() / "nominal").iterdir())
    folder = work / "textile-normal"
    folder.mkdir(parents=True, exist_ok=True)
    for path in nominal[:n_images]:
        (folder / path.name).symlink_to(path)
    bundle = work / "textile-patchcore"
    config = AnomalyFitConfig(data=str(folder), method="patchcore", out=str(bundle),
                              holdout=0.0001 if n_images > 50 else 0.2)
    fit = run_fit(config, progress=False)
    return {"data": f"textile nominal x{n_images}", "method": "patchcore",
            "model": "efficientnet_lite0", "n_fit": fit.n_fit, "fit_s": fit.fit_seconds,
            "finish_s": fit.details.get("finish_seconds"),
            "bank_before": fit.details["bank_before"], "bank_after": fit.details["bank_after"],
            "score_ms": round(score_latency_ms(bundle, nominal[n_images:n_images + 32]), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="*", default=None)
    parser.add_argument("--runs", nargs="*", default=DEFAULT_RUNS,
                        help="method[:model], e.g. patchcore:deit_tiny_patch16_224")
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--textile", type=int, default=0,
                        help="also time PatchCore fitting on this many textile images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vitkit-anomaly-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        for data in args.data if args.data is not None else DEFAULT_DATA:
            for run in args.runs:
                rows.append(bench_one(data, run, work, args.weights, args.holdout))
                if not args.json:
                    print(_line(rows[-1]), flush=True)
        if args.textile:
            rows.append(textile_fit(args.textile, work))
            if not args.json:
                print(_line(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


def _line(row: dict[str, Any]) -> str:
    def f(value: Any, digits: int = 3) -> str:
        return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float)
                                          else str(value))
    return (f"{row['data']:<28} {row['method']:<10} {f(row['model']):<22} "
            f"fit {f(row['fit_s'], 1)} s"
            f" (finish {f(row.get('finish_s'), 1)} s) n={row['n_fit']} bank "
            f"{f(row.get('bank_before'))}->{f(row.get('bank_after'))} score {f(row['score_ms'], 1)}"
            f" ms/img  image AUROC {f(row.get('image_auroc'))}  pixel AUROC "
            f"{f(row.get('pixel_auroc'))}  PRO {f(row.get('pro'))}")


if __name__ == "__main__":
    main()
