"""Few-shot anomaly detection: PatchCore (default settings) learning 1, 2, 4 or 8 normal images,
with and without dihedral copies, beside the full set; three seeded draws of the images.

    .venv/bin/python bench/anomaly_few_shot.py [--sets deeppcb,BDP,FLR] [--shots 1,2,4,8]
        [--seeds 0,1,2] [--jsonl FILE] [--plot FILE.png]

Per fit: image and pixel AUROC on the whole test set, F1 and the false-alarm rate on its
normal images at the stored threshold (nominal 1%). One normal image needs ``--augment``: its copies
are the folds of the out-of-fold threshold.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomaly_threshold import SETS, emit  # type: ignore[import-not-found]

from vitkit.anomaly.config import AnomalyFitConfig
from vitkit.anomaly.detector import load_anomaly_detector
from vitkit.data.files import find_images
from vitkit.data.mvtec import mvtec_test_images
from vitkit.workflows.anomaly import run_eval, run_fit


def one(data: Path, name: str, shots: int | None, augment: str, seed: int,
        work: Path) -> dict[str, Any]:
    normal, _ = find_images([str(data / "train" / "good")])
    chosen = sorted(normal) if shots is None else random.Random(seed).sample(sorted(normal),
                                                                            shots)
    folder = work / f"{name}-{shots}-{seed}-{augment}" / "good"
    folder.mkdir(parents=True)
    for path in chosen:
        (folder / path.name).symlink_to(path)
    bundle = folder.parent / "bundle"
    fit = run_fit(AnomalyFitConfig(data=str(folder), out=str(bundle), augment=augment,
                                   seed=seed), progress=False)  # type: ignore[arg-type]
    evaluation = run_eval(bundle, data, report=False, progress=False)
    detector = load_anomaly_detector(bundle, "cpu")
    good = [t.path for t in mvtec_test_images(data) if t.defect == "good"]
    scores = np.array([r.raw_score for r, _ in detector.score_paths(good)])
    return {"set": name, "shots": shots or len(normal), "augment": augment, "seed": seed,
            "fit_s": fit.fit_seconds, "image_auroc": evaluation["image_auroc"],
            "pixel_auroc": evaluation.get("pixel_auroc"), "f1": evaluation["f1"],
            "false_alarms": float((scores > detector.threshold).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="deeppcb,BDP,FLR")
    parser.add_argument("--shots", default="1,2,4,8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jsonl", default=None)
    parser.add_argument("--plot", default=None, help="AUROC and false alarms vs images, PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vitkit-few-shot-"))
    rows: list[dict[str, Any]] = []
    try:
        for name in args.sets.split(","):
            runs: list[tuple[int | None, str, int]] = [(None, "none", 0)]
            for shots in [int(s) for s in args.shots.split(",")]:
                for seed in [int(s) for s in args.seeds.split(",")]:
                    modes = ["dihedral"] if shots == 1 else ["none", "dihedral"]
                    runs += [(shots, mode, seed) for mode in modes]
            for shots, augment, seed in runs:
                rows.append(one(SETS[name], name, shots, augment, seed, work))
                emit(rows[-1], args.jsonl)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.plot:
        from plots import few_shot  # type: ignore[import-not-found]

        print(few_shot(rows, args.plot))


if __name__ == "__main__":
    main()
