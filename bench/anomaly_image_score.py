"""PatchCore's image score, three ways, from the same patch scores: the paper's re-weighted
maximum, the plain maximum, and the mean of the top k% of patch scores.

One fit per set (default settings unless given, out-of-fold threshold), every test image scored
once; the
three image scores come from the same patch-score map, so the AUROCs differ only by the rule.

    .venv/bin/python bench/anomaly_image_score.py [--sets deeppcb,BDP,FLR,textile]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from anomaly_threshold import SETS, textile_as_mvtec  # type: ignore[import-not-found]
from sklearn.metrics import roc_auc_score

from vitkit.anomaly.config import AnomalyFitConfig
from vitkit.anomaly.detector import load_anomaly_detector
from vitkit.data import load_rgb
from vitkit.data.mvtec import mvtec_test_images
from vitkit.workflows.anomaly import run_fit

TOP_SHARES = (0.01, 0.03, 0.1)


def top_mean(patch_maps: torch.Tensor, share: float) -> torch.Tensor:
    flat = patch_maps.flatten(1)
    k = max(1, round(share * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="deeppcb,BDP,FLR,textile")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (default: the model's, 224 px)")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vitkit-image-score-"))
    try:
        for name in args.sets.split(","):
            data = textile_as_mvtec(work / "textile", 200) if name == "textile" else SETS[name]
            bundle = work / f"{name}-bundle"
            # Fitted with the re-weighted score, so that the raw score is that rule's.
            run_fit(AnomalyFitConfig(data=str(data), out=str(bundle), model=args.model,
                                     image_size=args.image_size,
                                     coreset_ratio=args.coreset_ratio,
                                     image_score="reweighted"), progress=False)
            detector = load_anomaly_detector(bundle, "cpu")
            tests = mvtec_test_images(data)
            reweighted, maps = [], []
            for start in range(0, len(tests), 16):
                images = [load_rgb(t.path)[0] for t in tests[start:start + 16]]
                raw, patch_maps = detector.raw_scores(images)
                reweighted.append(raw)
                maps.append(patch_maps)
            patch_maps = torch.cat(maps)
            labels = [int(t.defect != "good") for t in tests]
            rules = {"reweighted": torch.cat(reweighted),
                     "max": patch_maps.flatten(1).amax(dim=1)}
            rules |= {f"top{round(100 * s)}%": top_mean(patch_maps, s) for s in TOP_SHARES}
            row = {"set": name, "model": args.model, "image_size": args.image_size,
                   "n_test": len(tests),
                   **{rule: round(float(roc_auc_score(labels, scores.numpy())), 4)
                      for rule, scores in rules.items()}}
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
