"""Token merging (ToMe) on DeiT-tiny: speed and agreement for a few merge rates.

Random weights (``timm.create_model("deit_tiny_patch16_224", pretrained=False)``): no
pretrained DeiT is available offline, so "agreement" is top-1 agreement with the unmerged
model on random inputs, a stress figure for how much merging changes the outputs, not an
accuracy. For accuracy on your data use ``vitkit bench BUNDLE --tome 4,8,13``.

    .venv/bin/python bench/tome_deit.py                 # r = 0 4 8 13 16, fp32 and bf16
    .venv/bin/python bench/tome_deit.py --check-export  # also ONNX Runtime parity at r=8

Batch-1 latency (median) and batch-32 throughput on ``--threads`` threads, torch eager.
"""

from __future__ import annotations

import os

_THREADS = os.environ.get("BENCH_THREADS", "2")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402

from vitkit.benchmark.timing import Budget, measure_latency, measure_throughput  # noqa: E402
from vitkit.compress.tome import apply_tome  # noqa: E402

BUDGET = Budget(warmup_runs=3, min_runs=20, min_seconds=3.0, max_runs=300, max_seconds=8.0,
                throughput_min_runs=3, throughput_min_seconds=3.0, throughput_max_seconds=8.0)


def tokens_left(r: int, tokens: int = 197, depth: int = 12, protected: int = 1) -> int:
    """Tokens after the last block (merging stops at half the free tokens per block)."""
    for _ in range(depth):
        tokens -= min(r, (tokens - protected) // 2)
    return tokens


def runner(model: torch.nn.Module, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            return model(x).float()
    return run


def measure(base: torch.nn.Module, r: int, precision: str, probe: torch.Tensor,
            expected: torch.Tensor, timing: bool = True) -> dict[str, object]:
    model = apply_tome(base, r)
    run = runner(model, precision)
    agreement = float((run(probe).argmax(1) == expected).float().mean())
    row: dict[str, object] = {"r": r, "precision": precision, "tokens_last_block": tokens_left(r),
                              "gflop_per_image": gflops(model), "agreement": round(agreement, 3)}
    if timing:
        latency = measure_latency(run, torch.randn(1, 3, 224, 224), BUDGET)
        row.update(latency_p50_ms=latency.p50, latency_p95_ms=latency.p95,
                   throughput_b32=measure_throughput(run, torch.randn(32, 3, 224, 224), BUDGET))
    return row


def gflops(model: torch.nn.Module) -> float:
    """Forward GFLOP per image, counted by torch's FlopCounterMode (matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.randn(1, 3, 224, 224))
    return round(counter.get_total_flops() / 1e9, 3)


def check_export(base: torch.nn.Module, r: int) -> dict[str, object]:
    """ONNX export with a dynamic batch and ONNX Runtime parity (batches 1 and 5)."""
    import onnxruntime as ort

    model = apply_tome(base, r)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "tome.onnx"
        torch.onnx.export(model, (torch.randn(2, 3, 224, 224),), str(path), dynamo=False,
                          opset_version=17, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        diffs = []
        for batch in (1, 5):
            x = torch.randn(batch, 3, 224, 224)
            (got,) = session.run(None, {"images": x.numpy()})
            with torch.inference_mode():
                diffs.append(float((torch.from_numpy(got) - model(x)).abs().max()))
    return {"r": r, "onnx_max_abs_diff": max(diffs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="0,4,8,13,16")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--check-export", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-timing", action="store_true",
                        help="only FLOPs and agreement (deterministic; for a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(int(_THREADS))
    torch.manual_seed(0)
    base = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    probe = torch.randn(64, 3, 224, 224)
    with torch.inference_mode():
        expected = base(probe).argmax(1)
    rows = [measure(base, int(r), p, probe, expected, timing=not args.no_timing)
            for p in args.precisions.split(",") for r in args.rates.split(",")]
    result: dict[str, object] = {"threads": torch.get_num_threads(), "rows": rows,
                                 "load_average": os.getloadavg()}
    if args.check_export:
        result["export"] = check_export(base, 8)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"threads {result['threads']}, load average {result['load_average']}")
    print("| precision | r | tokens in last block | GFLOP/image | batch-1 p50 ms | "
          "batch-32 img/s | agreement with r=0 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['precision']} | {row['r']} | {row['tokens_last_block']} | "
              f"{row['gflop_per_image']:.2f} | {row.get('latency_p50_ms', '—')} | "
              f"{row.get('throughput_b32', '—')} | {row['agreement']:.3f} |")
    if "export" in result:
        print(f"ONNX export at r=8 (dynamic batch): {result['export']}")


if __name__ == "__main__":
    main()
