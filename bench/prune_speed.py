"""Pruned ViTs against the unpruned one they came from, in one run: accuracy, agreement with
the unpruned model, batch-1 latency and batch-32 throughput of OpenVINO int8, all against
timm eager fp32 of the unpruned model (issue 18's baseline).

    .venv/bin/python bench/prune_speed.py UNPRUNED_BUNDLE PRUNED_BUNDLE [PRUNED_BUNDLE ...]

Each pruned bundle comes from `vitkit prune UNPRUNED …`; its OpenVINO int8 variant is built
here when missing (`vitkit quantize`, guard off: the guard that matters is against the
unpruned model, measured below on its validation images).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from speed_goal import TimmEager  # type: ignore[import-not-found]

from vitkit.benchmark.timing import Budget, measure_latency, measure_throughput
from vitkit.bundle import read_meta
from vitkit.compress.quantize import quantize_bundle
from vitkit.compress.reference import compare, image_batches, reference_images
from vitkit.predictor.predict import load
from vitkit.predictor.variants import list_variants

BUDGET = Budget(warmup_runs=3, min_runs=20, min_seconds=2.0, max_seconds=6.0,
                throughput_min_runs=3, throughput_min_seconds=2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("unpruned", type=Path)
    parser.add_argument("pruned", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundles = [args.unpruned, *args.pruned]
    for bundle in bundles:
        if "openvino-int8" not in {v.name for v in list_variants(read_meta(bundle))}:
            quantize_bundle(bundle, method="static", runtime="openvino", max_drop=100.0)
    meta = read_meta(args.unpruned)
    validation = reference_images(meta, None, "val")
    assert validation is not None, "the unpruned bundle's validation images are not here"
    batches = list(image_batches(validation.samples, meta, 32))
    reference = load(args.unpruned, variant="torch-fp32", ood=False)
    runners: dict[str, Any] = {"timm-eager": TimmEager(args.unpruned)}
    rows: dict[str, dict[str, Any]] = {}
    for bundle in bundles:
        name = f"{bundle.parent.name}/openvino-int8"
        runner = load(bundle, variant="openvino-int8", threads=args.threads, ood=False)
        runners[name] = runner
        c = compare(reference, runner, batches)
        rows[name] = {"accuracy": c.accuracy, "drop_vs_unpruned": c.accuracy_drop,
                      "agreement_vs_unpruned": c.top1_agreement,
                      "mlp_width": runner.meta.backbone.get("timm_kwargs", {}).get("mlp_ratio")}
    size = tuple(runners["timm-eager"].preprocessing.input_size)
    one, many = torch.randn(1, 3, *size), torch.randn(32, 3, *size)
    latency: dict[str, list[float]] = {n: [] for n in runners}
    rate: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            latency[name].append(measure_latency(runner, one, BUDGET).p50)
            rate[name].append(measure_throughput(runner, many, BUDGET))
    base_latency = statistics.median(latency["timm-eager"])
    base_rate = statistics.median(rate["timm-eager"])
    out = {"timm-eager": {"latency_ms_p50": base_latency, "throughput_b32": base_rate}}
    for name, row in rows.items():
        p50, b32 = statistics.median(latency[name]), statistics.median(rate[name])
        out[name] = row | {"latency_ms_p50": round(p50, 2), "throughput_b32": round(b32, 1),
                           "latency_x": round(base_latency / p50, 2),
                           "throughput_x": round(b32 / base_rate, 2)}
    print(json.dumps(out, indent=2, default=float))
    print(f"n_val {batches and sum(len(b[1]) for b in batches)}", file=sys.stderr)


if __name__ == "__main__":
    main()
