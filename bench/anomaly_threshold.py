"""Out-of-fold threshold vs the former 80/20 hold-out split, side by side on every set.

For each set and method: fit once with ``folds=5`` (every normal image learned; the threshold
from out-of-fold scores) and once with ``holdout=0.2`` (a fifth never learned; the threshold
from its scores); then image / pixel AUROC on the test set, and the false-alarm rate on the
test set's normal images (never seen by either fit) at the stored 99th-percentile threshold
and at a 95th-percentile threshold set from the same normal scores, against the nominal 1% /
5%.

    .venv/bin/python bench/anomaly_threshold.py [--sets deeppcb,BDP,FLR,textile]
        [--methods patchcore,padim] [--jsonl FILE]

Sets: deeppcb and both piped-paper sets from ../shared/datasets (MVTec layout), and the demo
package's textile images laid out as MVTec (``--textile-fit`` nominal images to learn, the
next 300 nominal and 100 of each defect kind to test; no masks).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.anomaly.config import AnomalyFitConfig
from vitkit.anomaly.detector import load_anomaly_detector
from vitkit.bundle import read_meta
from vitkit.data.mvtec import mvtec_test_images
from vitkit.workflows.anomaly import run_eval, run_fit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = {"deeppcb": SHARED / "deeppcb", "BDP": SHARED / "piped_paper" / "PA_BDP01_TL",
        "FLR": SHARED / "piped_paper" / "PA_FLR01_TL"}


def emit(row: dict[str, Any], jsonl: str | None) -> None:
    """Prints one result line and, with ``jsonl``, appends it to that file."""
    print(json.dumps(row), flush=True)
    if jsonl:
        with open(jsonl, "a") as handle:
            handle.write(json.dumps(row) + "\n")


def textile_as_mvtec(root: Path, n_fit: int) -> Path:
    from vitkit.workflows.demo import textile_root

    base = textile_root()
    nominal = sorted((base / "nominal").iterdir())
    layout = {"train/good": nominal[:n_fit], "test/good": nominal[n_fit:n_fit + 300],
              "test/local": sorted((base / "local").iterdir())[:100],
              "test/global": sorted((base / "global").iterdir())[:100]}
    for folder, files in layout.items():
        (root / folder).mkdir(parents=True)
        for path in files:
            (root / folder / path.name).symlink_to(path)
    return root


def one(data: Path, name: str, method: str, mode: str, work: Path) -> dict[str, Any]:
    bundle = work / f"{name}-{method}-{mode}"
    split = {"folds": 5} if mode == "out-of-fold" else {"holdout": 0.2}
    fit = run_fit(AnomalyFitConfig(data=str(data), method=method,  # type: ignore[arg-type]
                                   out=str(bundle), **split), progress=False)
    evaluation = run_eval(bundle, data, report=False, progress=False)
    detector = load_anomaly_detector(bundle, "cpu")
    good = [t.path for t in mvtec_test_images(data) if t.defect == "good"]
    scores = np.array([r.raw_score for r, _ in detector.score_paths(good)])
    normal_scores = np.array(read_meta(bundle).model_extra["anomaly"]["fit"]["threshold_scores"])
    at_95 = float(np.percentile(normal_scores, 95.0))
    return {"set": name, "method": method, "threshold_from": mode, "n_fit": fit.n_fit,
            "n_threshold_scores": len(normal_scores), "fit_s": fit.fit_seconds,
            "image_auroc": evaluation["image_auroc"],
            "pixel_auroc": evaluation.get("pixel_auroc"), "n_test_good": len(good),
            "false_alarms_99": float((scores > detector.threshold).mean()),
            "false_alarms_95": float((scores > at_95).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="deeppcb,BDP,FLR,textile")
    parser.add_argument("--methods", default="patchcore,padim")
    parser.add_argument("--modes", default="holdout,out-of-fold")
    parser.add_argument("--textile-fit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vitkit-threshold-"))
    try:
        for name in args.sets.split(","):
            data = (textile_as_mvtec(work / "textile", args.textile_fit) if name == "textile"
                    else SETS[name])
            for method in args.methods.split(","):
                for mode in args.modes.split(","):
                    emit(one(data, name, method, mode, work), args.jsonl)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
