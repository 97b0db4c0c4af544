"""What `vitkit quantize` buys on a CPU: DeiT-tiny on every runtime and precision.

timm ``deit_tiny_patch16_224`` with random weights (offline), 224 px, a fixed number of CPU
threads (default 2). For each variant: batch-1 latency (median of many runs after warm-up) and
batch-32 throughput (32 / median batch time), with ratios against timm eager fp32 (what a user
does without vitkit). Int8 variants are built with vitkit's own recipes
(:mod:`vitkit.compress.quantize`): NNCF with the transformer preset for OpenVINO, static QDQ
and dynamic int8 for ONNX Runtime, calibrated on generated images (random weights make
accuracy meaningless here; `vitkit quantize` measures it on real validation images).

Not run in CI. Usage:
    python bench/quantize_deit.py [--threads 2] [--runs 60] [--rounds 3] [--calib 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from vitkit.compress.export import export_onnx, to_openvino
from vitkit.compress.quantizers import (
    pre_process_onnx,
    quantize_onnx_dynamic,
    quantize_onnx_static,
    quantize_openvino,
)
from vitkit.predictor.runtimes import OnnxRuntime, OpenVinoRuntime, TorchRuntime

Forward = Callable[[torch.Tensor], torch.Tensor]


def timed(forward: Forward, batch: torch.Tensor, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward(batch)
        times.append(time.perf_counter() - start)
    return times


def measure_all(variants: dict[str, Forward], runs: int, batch_runs: int, rounds: int
                ) -> dict[str, tuple[float, float]]:
    """{name: (batch-1 latency ms, batch-32 img/s)}. The variants take turns over several
    rounds, so load from other processes on a shared machine hits them alike."""
    gen = torch.Generator().manual_seed(1)
    one = torch.randn(1, 3, 224, 224, generator=gen)
    many = torch.randn(32, 3, 224, 224, generator=gen)
    singles: dict[str, list[float]] = {name: [] for name in variants}
    batches: dict[str, list[float]] = {name: [] for name in variants}
    for forward in variants.values():  # warm-up
        timed(forward, one, 5)
        timed(forward, many, 1)
    for round_ in range(rounds):
        for name, forward in variants.items():
            singles[name] += timed(forward, one, max(1, runs // rounds))
            batches[name] += timed(forward, many, max(1, batch_runs // rounds))
        print(f"  round {round_ + 1}/{rounds} done", flush=True)
    return {name: (1000.0 * statistics.median(singles[name]),
                   32.0 / statistics.median(batches[name])) for name in variants}


def build_variants(model: nn.Module, work: Path, threads: int, calib_n: int
                   ) -> dict[str, Forward]:
    import openvino as ov

    example = torch.zeros(1, 3, 224, 224)
    gen = torch.Generator().manual_seed(2)
    calib = [torch.randn(1, 3, 224, 224, generator=gen).numpy().astype(np.float32)
             for _ in range(calib_n)]
    variants: dict[str, Forward] = {
        "timm eager fp32": TorchRuntime(model, "fp32"),
        "torch dynamic int8": TorchRuntime(model, "int8"),
        "torch bf16 autocast": TorchRuntime(model, "bf16"),
    }
    fp32_onnx = work / "model.onnx"
    export_onnx(model, fp32_onnx, tuple(example.shape[-2:]))
    prepared = pre_process_onnx(fp32_onnx, work)
    quantize_onnx_dynamic(prepared, work / "model.dyn.onnx")
    quantize_onnx_static(prepared, work / "model.qdq.onnx", calib, transformer=True)
    variants["ONNX Runtime fp32"] = OnnxRuntime(fp32_onnx, "fp32", threads=threads)
    variants["ONNX Runtime dynamic int8"] = OnnxRuntime(work / "model.dyn.onnx", "int8",
                                                        threads=threads)
    variants["ONNX Runtime static int8 (QDQ)"] = OnnxRuntime(work / "model.qdq.onnx", "int8",
                                                             threads=threads)
    ov_model = to_openvino(model, tuple(example.shape[-2:]))
    ov.save_model(ov_model, str(work / "ov.xml"), compress_to_fp16=False)
    ov.save_model(quantize_openvino(ov_model, calib, transformer=True), str(work / "ov8.xml"),
                  compress_to_fp16=False)
    variants["OpenVINO fp32"] = OpenVinoRuntime(work / "ov.xml", "fp32", threads=threads)
    variants["OpenVINO bf16"] = OpenVinoRuntime(work / "ov.xml", "bf16", threads=threads)
    variants["OpenVINO + NNCF int8 (bf16 hint)"] = OpenVinoRuntime(work / "ov8.xml", "int8",
                                                                   threads=threads)
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60, help="batch-1 runs per variant")
    parser.add_argument("--batch-runs", type=int, default=6, help="batch-32 runs per variant")
    parser.add_argument("--rounds", type=int, default=3, help="turns the variants take")
    parser.add_argument("--calib", type=int, default=64, help="calibration images")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(model, Path(tmp), args.threads, args.calib)
        print(f"built {len(variants)} variants in {time.perf_counter() - started:.0f} s")
        measured = measure_all(variants, args.runs, args.batch_runs, args.rounds)
    rows = [(name, *measured[name]) for name in variants]
    base_latency, base_throughput = rows[0][1], rows[0][2]
    print(f"\nDeiT-tiny, 224 px, random weights, {args.threads} threads "
          f"(median of {args.runs} batch-1 / {args.batch_runs} batch-32 runs in "
          f"{args.rounds} interleaved rounds)\n")
    print("| runtime | batch 1 latency | speed-up | batch 32 throughput | speed-up |")
    print("|---|---|---|---|---|")
    for name, latency, throughput in rows:
        print(f"| {name} | {latency:.1f} ms | {base_latency / latency:.2f}x | "
              f"{throughput:.0f} img/s | {throughput / base_throughput:.2f}x |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
