"""The exported variants of a segmentation or detection bundle against its PyTorch model, as
ratios measured in one run: `vitkit optimize` builds each (ONNX, OpenVINO, bf16), measures
latency (batch 1) and throughput (``--batch``) on the same validation images with the task's
own figure (Dice, mAP@0.5), and this prints, per variant, the speed-up over torch-fp32 and the
figure's change (goal: >= 2x at a change within 0.01).

Usage: python bench/task_export_speed.py BUNDLE DATA [BUNDLE DATA ...] [--batch 8]
       (the bundles of `bench/tasks_real.py --keep DIR`, e.g. DIR/seg-deeppcb-unet-auto/bundle)
"""

from __future__ import annotations

import argparse
import json

from vitkit.bundle import Bundle
from vitkit.workflows.optimize import run_optimize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="BUNDLE DATA, repeated")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give BUNDLE DATA pairs")
    for bundle, data in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        result = run_optimize(bundle, data=data, batch=args.batch, max_drop=1.0)
        reports = {c.name: c for c in result.candidates}
        reference = reports["torch-fp32"]
        for name, report in reports.items():
            if report.status != "ok" or name == "torch-fp32":
                continue
            print(json.dumps({
                "bundle": bundle, "task": Bundle.open(bundle).meta.task, "variant": name,
                "figure": report.accuracy, "figure_torch": reference.accuracy,
                "figure_change": None if report.accuracy is None or reference.accuracy is None
                else round(report.accuracy - reference.accuracy, 4),
                "latency_ms": report.latency_p50_ms, "latency_ms_torch": reference.latency_p50_ms,
                "latency_speedup": round(reference.latency_p50_ms / report.latency_p50_ms, 2)
                if report.latency_p50_ms and reference.latency_p50_ms else None,
                "throughput": report.throughput, "throughput_torch": reference.throughput,
                "throughput_ratio": round(report.throughput / reference.throughput, 2)
                if report.throughput and reference.throughput else None,
                "batch": args.batch, "chosen": result.default_variant}), flush=True)


if __name__ == "__main__":
    main()
