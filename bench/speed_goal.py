"""Issue 4's performance goal, measured in one run: the fastest variant vitkit makes with default
options against timm eager fp32, for deit_tiny_patch16_224 trained in vitkit on hymenoptera.

    .venv/bin/python bench/speed_goal.py                       # trains a DeiT-tiny bundle first
    .venv/bin/python bench/speed_goal.py --bundle runs/deit/bundle --tome 8

Steps: (1) a DeiT-tiny bundle (given, or trained here from random weights: no ViT weights are
available offline, so its accuracy is low, but speed and agreement do not depend on it);
(2) `vitkit quantize` with default options (static int8 on the fastest runtime installed) and,
with --tome, the same with token merging; (3) batch-1 latency and batch-32 throughput of every
variant, measured in interleaved rounds so that load from other processes hits all alike;
(4) ratios against timm eager fp32 (the timm model under ``no_grad``, what a user runs; vitkit's
own torch-fp32, under ``inference_mode``, is listed too) and the goals:
>= 6x throughput at batch 32, >= 4x lower batch-1 latency, >= 99% top-1 agreement, <= 0.5
points accuracy drop; with token merging >= 8x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from vitkit.bench.timing import Budget, measure_latency, measure_throughput
from vitkit.classify.config import TrainConfig
from vitkit.compress.quantize import quantize_bundle
from vitkit.predictor.predict import load
from vitkit.workflows.train import run_training

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"
GOALS = {"throughput_x": 6.0, "latency_x": 4.0, "agreement": 0.99, "max_drop": 0.5,
         "tome_throughput_x": 8.0}


def train_deit(out: Path, epochs: int) -> Path:
    config = TrainConfig(data=str(DATA), model="deit_tiny_patch16_224", weights="none",
                         epochs=epochs, batch_size=32, out=str(out))
    return Path(run_training(config, progress=False).bundle)


class TimmEager:
    """What a user runs without vitkit: the timm model, eager, fp32, under ``no_grad``."""

    def __init__(self, bundle: Path) -> None:
        predictor = load(bundle)
        assert predictor.model is not None
        self.model = predictor.model.model.eval()
        self.preprocessing = predictor.preprocessing

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(batch)


def measure(bundle: Path, names: list[str], rounds: int, budget: Budget) -> dict[str, Any]:
    predictors: dict[str, Any] = {"timm-eager": TimmEager(bundle)}
    predictors |= {name: load(bundle, variant=name, threads=torch.get_num_threads())
                   for name in names}
    size = tuple(predictors[names[0]].preprocessing.input_size)
    one, many = torch.randn(1, 3, *size), torch.randn(32, 3, *size)
    latency: dict[str, list[float]] = {n: [] for n in predictors}
    throughput: dict[str, list[float]] = {n: [] for n in predictors}
    for _ in range(rounds):
        for name, predictor in predictors.items():
            latency[name].append(measure_latency(predictor, one, budget).p50)
            throughput[name].append(measure_throughput(predictor, many, budget))
    return {name: {"latency_ms_p50": statistics.median(latency[name]),
                   "throughput_b32": statistics.median(throughput[name])}
            for name in predictors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a deit_tiny_patch16_224 classifier bundle")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vitkit-speed-goal"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tome", default="8,16",
                        help="tokens merged per block, comma-separated rates; 0 = skip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = args.bundle or train_deit(args.out, args.epochs)
    made = [quantize_bundle(bundle, max_drop=100.0)]  # checked against the goal below
    for rate in [int(r) for r in args.tome.split(",") if int(r) > 0]:
        made.append(quantize_bundle(bundle, tome=rate, max_drop=100.0))
    names = ["torch-fp32", *[m.variant.name for m in made]]
    timings = measure(bundle, names, args.rounds,
                      Budget(warmup_runs=3, min_runs=20, min_seconds=2.0, max_seconds=6.0,
                             throughput_min_runs=3, throughput_min_seconds=2.0))
    base = timings["timm-eager"]
    rows = []
    for result in made:
        name = result.variant.name
        comparison = result.comparison
        row = {"variant": name, **timings[name],
               "throughput_x": round(timings[name]["throughput_b32"] / base["throughput_b32"], 2),
               "latency_x": round(base["latency_ms_p50"] / timings[name]["latency_ms_p50"], 2),
               "agreement": comparison.top1_agreement if comparison else None,
               "accuracy": comparison.accuracy if comparison else None,
               "accuracy_drop": comparison.accuracy_drop if comparison else None}
        goal_x = GOALS["tome_throughput_x"] if "tome" in name else GOALS["throughput_x"]
        row["meets_goal"] = bool(
            row["throughput_x"] >= goal_x and row["latency_x"] >= GOALS["latency_x"]
            and row["agreement"] is not None and row["agreement"] >= GOALS["agreement"]
            and row["accuracy_drop"] is not None and row["accuracy_drop"] <= GOALS["max_drop"])
        rows.append(row)
    report = {"bundle": str(bundle), "threads": args.threads, "load_avg": os.getloadavg(),
              "timm-eager": base, "torch-fp32": timings["torch-fp32"], "variants": rows,
              "goals": GOALS}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name in ("timm-eager", "torch-fp32"):
        print(f"{name:<24} {timings[name]['latency_ms_p50']:7.1f} ms at batch 1, "
              f"{timings[name]['throughput_b32']:7.1f} img/s at batch 32", file=sys.stderr)
    for row in rows:
        print(f"{row['variant']:<24} {row['latency_ms_p50']:7.1f} ms ({row['latency_x']:.2f}x)  "
              f"{row['throughput_b32']:7.1f} img/s ({row['throughput_x']:.2f}x)  agreement "
              f"{row['agreement']}  drop {row['accuracy_drop']} pt  goal met: {row['meets_goal']}",
              file=sys.stderr)
    print(f"load average {report['load_avg']}", file=sys.stderr)


if __name__ == "__main__":
    main()
