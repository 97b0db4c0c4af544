"""Issue 18's performance goal, measured in one run: the default variant that `vitkit optimize`
chooses on this machine against timm eager fp32 of the same model.

    .venv/bin/python bench/speed_goal.py --bundle runs/vit/bundle   # a fine-tuned offline ViT
    .venv/bin/python bench/speed_goal.py                            # fine-tunes one first
    .venv/bin/python bench/speed_goal.py --model deit_tiny_patch16_224   # speed-only case

Steps: (1) the bundle (given, or trained here on hymenoptera with the default recipe: the
offline ViT, or DeiT-tiny from random weights for the speed-only case); (2) `vitkit optimize`
with default options: every candidate built, measured for accuracy and agreement, and the
fastest within the guard (0.5 points, 99% agreement) made the default; (3) batch-1 latency and
batch-32 throughput of timm eager, torch-fp32, the default and the fastest token-merging
variant, in interleaved rounds so that load from other processes hits all alike; (4) ratios
against timm eager fp32 (the timm model under ``no_grad``, what a user runs), the goals
(>= 6x throughput at batch 32, >= 4x lower batch-1 latency; >= 8x with token merging, within
the same guard), where the time goes (torch profiler by operator for eager fp32; OpenVINO's
per-layer counters by layer type for the default variant) and the machine's measured bf16 and
fp32 matmul peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from vitkit.benchmark.timing import Budget, measure_latency, measure_throughput
from vitkit.bundle import read_meta
from vitkit.classify.config import TrainConfig
from vitkit.compress.quantize import quantize_bundle
from vitkit.predictor.predict import load
from vitkit.predictor.variants import find_variant, variant_path
from vitkit.workflows.optimize import CandidateReport, run_optimize
from vitkit.workflows.train import run_training

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"
GOALS = {"throughput_x": 6.0, "latency_x": 4.0, "agreement": 0.99, "max_drop": 0.5,
         "tome_throughput_x": 8.0}


def train(model: str, out: Path, epochs: int) -> Path:
    offline = model != "deit_tiny_patch16_224"
    config = TrainConfig(data=str(DATA), model=model, weights="auto" if offline else "none",
                         epochs=epochs, out=str(out))
    return Path(run_training(config, progress=False).bundle)


class TimmEager:
    """What a user runs without vitkit: the timm model, eager, fp32, under ``no_grad``."""

    def __init__(self, bundle: Path) -> None:
        predictor = load(bundle, variant="torch-fp32")
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
    size = tuple(predictors["timm-eager"].preprocessing.input_size)
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


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Measured dense matmul rate in TFLOP/s (n x n by n x n) on this machine's threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        runs += 1
    return 2 * n ** 3 * runs / (time.perf_counter() - start) / 1e12


def eager_profile(eager: TimmEager, batch: int = 32) -> dict[str, float]:
    """Share of eager fp32 time per operator group (CPU self time), one batch."""
    from torch.profiler import ProfilerActivity, profile

    images = torch.randn(batch, 3, *eager.preprocessing.input_size)
    eager(images)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        eager(images)
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        name = event.key
        group = ("matmul (linear)" if name in ("aten::addmm", "aten::mm", "aten::linear",
                                                "aten::bmm", "aten::matmul")
                 else "attention" if "attention" in name or "softmax" in name
                 else "convolution" if "conv" in name
                 else "normalisation" if "norm" in name
                 else "activation" if name in ("aten::gelu", "aten::silu", "aten::relu")
                 else "other")
        groups[group] += event.self_cpu_time_total
    total = sum(groups.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}


def openvino_profile(bundle: Path, name: str, batch: int = 32) -> dict[str, float] | None:
    """Share of an OpenVINO variant's time per layer type (its per-layer counters)."""
    variant = find_variant(read_meta(bundle), name, bundle)
    if variant.runtime != "openvino":
        return None
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(variant_path(bundle, variant)))
    size = read_meta(bundle).preprocessing["input_size"]
    model.reshape([batch, 3, *size])
    precision = "f32" if variant.precision == "fp32" else "bf16"
    compiled = core.compile_model(model, "CPU", {"PERF_COUNT": "YES",
                                                 "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    images = torch.randn(batch, 3, *size).numpy()
    request.infer({0: images})
    request.infer({0: images})
    groups: dict[str, float] = defaultdict(float)
    for info in request.get_profiling_info():
        groups[f"{info.node_type} ({info.exec_type.split('_')[-1]})"] += (
            info.real_time.total_seconds())
    total = sum(groups.values()) or 1.0
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:8]
    return {k: round(v / total, 3) for k, v in top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a classifier bundle (else trained here)")
    parser.add_argument("--model", default="vit_small_patch14_dinov2")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vitkit-speed-goal"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tome", type=lambda t: [int(r) for r in t.split(",") if int(r) > 0],
                        default=[8, 16], help="token-merging rates timed beside the default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="accuracy drop vs batch-32 throughput, PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = args.bundle or train(args.model, args.out, args.epochs)
    # Token merging is timed below whatever the guard says, so optimize need not build it.
    optimized = run_optimize(bundle, tome=[], log=lambda m: print(m, file=sys.stderr))
    candidates = {c.name: c for c in optimized.candidates}
    names = ["torch-fp32", optimized.default_variant]
    for rate in args.tome:  # timed even when the guard refused them, to say what they cost
        name = f"openvino-int8-tome{rate}"
        made = quantize_bundle(bundle, tome=rate, max_drop=100.0)
        comparison = made.comparison
        candidates[name] = CandidateReport(
            name, "ok", accuracy=comparison.accuracy if comparison else None,
            accuracy_drop=comparison.accuracy_drop if comparison else None,
            agreement=comparison.top1_agreement if comparison else None)
        names.append(name)
    names = list(dict.fromkeys(names))
    timings = measure(bundle, names, args.rounds,
                      Budget(warmup_runs=3, min_runs=20, min_seconds=2.0, max_seconds=6.0,
                             throughput_min_runs=3, throughput_min_seconds=2.0))
    base = timings["timm-eager"]
    rows = []
    for name in names[1:]:
        c = candidates[name]
        row = {"variant": name, **timings[name], "default": name == optimized.default_variant,
               "throughput_x": round(timings[name]["throughput_b32"] / base["throughput_b32"], 2),
               "latency_x": round(base["latency_ms_p50"] / timings[name]["latency_ms_p50"], 2),
               "agreement": c.agreement, "accuracy": c.accuracy,
               "accuracy_drop": c.accuracy_drop}
        goal_x = GOALS["tome_throughput_x"] if "tome" in name else GOALS["throughput_x"]
        row["within_guard"] = bool(
            c.agreement is not None and c.agreement >= GOALS["agreement"]
            and c.accuracy_drop is not None and c.accuracy_drop <= GOALS["max_drop"])
        row["meets_goal"] = bool(row["within_guard"] and row["throughput_x"] >= goal_x
                                 and row["latency_x"] >= GOALS["latency_x"])
        rows.append(row)
    eager = TimmEager(bundle)
    report = {"bundle": str(bundle), "threads": args.threads, "load_avg": os.getloadavg(),
              "timm-eager": base, "torch-fp32": timings["torch-fp32"], "variants": rows,
              "candidates": [c.to_dict() for c in optimized.candidates],
              "goals": GOALS, "machine": optimized.machine,
              "matmul_tflops": {"fp32": round(matmul_peak(torch.float32), 2),
                                "bf16": round(matmul_peak(torch.bfloat16), 2)},
              "profile_eager_fp32": eager_profile(eager),
              "profile_default": openvino_profile(bundle, optimized.default_variant)}
    if args.plot:
        from plots import speed_vs_accuracy  # type: ignore[import-not-found]

        speed_vs_accuracy([{"variant": c["name"], "throughput": c["throughput"],
                            "accuracy_drop": c["accuracy_drop"],
                            "default": c["name"] == optimized.default_variant}
                           for c in report["candidates"] if c.get("throughput")],
                          args.plot, str(bundle))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name in ("timm-eager", "torch-fp32"):
        print(f"{name:<24} {timings[name]['latency_ms_p50']:7.1f} ms at batch 1, "
              f"{timings[name]['throughput_b32']:7.1f} img/s at batch 32", file=sys.stderr)
    for row in rows:
        print(f"{row['variant']:<24} {row['latency_ms_p50']:7.1f} ms ({row['latency_x']:.2f}x)  "
              f"{row['throughput_b32']:7.1f} img/s ({row['throughput_x']:.2f}x)  agreement "
              f"{row['agreement']}  drop {row['accuracy_drop']} pt  goal met: {row['meets_goal']}"
              f"{'  (default)' if row['default'] else ''}", file=sys.stderr)
    print(f"matmul peak (TFLOP/s): {report['matmul_tflops']}", file=sys.stderr)
    print(f"eager fp32 time by operator: {report['profile_eager_fp32']}", file=sys.stderr)
    print(f"default variant time by layer: {report['profile_default']}", file=sys.stderr)
    print(f"load average {report['load_avg']}", file=sys.stderr)


if __name__ == "__main__":
    main()
