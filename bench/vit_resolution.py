"""Resolution as a knob: a fine-tuned ViT with an interpolated position grid evaluated at
smaller inputs (fewer tokens), accuracy and speed side by side, in one run.

    .venv/bin/python bench/vit_resolution.py BUNDLE [--sizes 224,196,168,140]

For each size: validation accuracy and top-1 agreement with the model at its own size (torch
fp32, the bundle's preprocessing with only the input size changed), the token count, and
batch-32 throughput of torch fp32 and of OpenVINO bf16 / int8 graphs exported at that size.
Only ViTs made with ``dynamic_img_size`` (e.g. the offline vit_small_patch14_dinov2) take
other sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from vitkit.benchmark.timing import Budget, measure_throughput
from vitkit.compress.reference import reference_images
from vitkit.data import Preprocessing, eval_transform, load_rgb
from vitkit.predictor.predict import load

BUDGET = Budget(warmup_runs=2, min_runs=5, min_seconds=1.0, max_seconds=4.0,
                throughput_min_runs=3, throughput_min_seconds=2.0)


def logits_at(model: torch.nn.Module, pre: Preprocessing, paths: list[Path], size: int
              ) -> torch.Tensor:
    transform = eval_transform(pre.model_copy(update={"input_size": (3, size, size)}))
    rows = []
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            batch = torch.stack([transform(load_rgb(p)[0]) for p in paths[start:start + 32]])
            rows.append(model(batch).float())
    return torch.cat(rows)


def openvino_throughput(model: torch.nn.Module, size: int, int8_calib: torch.Tensor | None
                        ) -> dict[str, float]:
    import openvino as ov

    from vitkit.compress.export import to_openvino
    from vitkit.compress.quantizers import quantize_openvino

    example = torch.randn(32, 3, size, size)
    out: dict[str, float] = {}
    graph = to_openvino(model, (size, size))
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        for name, candidate in (("openvino-bf16", graph), ("openvino-int8", None)):
            if candidate is None:
                if int8_calib is None:
                    continue
                candidate = quantize_openvino(  # NNCF returns a new model; graph is kept
                    graph, [b.numpy() for b in int8_calib.split(8)], transformer=True)
            path = Path(tmp) / f"{name}.xml"
            ov.save_model(candidate, str(path))
            reshaped = core.read_model(str(path))
            reshaped.reshape([32, 3, size, size])
            compiled = core.compile_model(reshaped, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
            request = compiled.create_infer_request()
            array = example.numpy()
            out[name] = measure_throughput(
                lambda _b, r=request, a=array: r.infer({0: a}), example, BUDGET)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--sizes", default="224,196,168,140")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = load(args.bundle, variant="torch-fp32", ood=False)
    model = predictor.torch_model().eval()
    found = reference_images(predictor.meta, None, "val")
    if found is None:
        sys.exit("the bundle lists no validation images")
    samples = found.samples
    paths = [s.path for s in samples]
    index = {label: i for i, label in enumerate(predictor.meta.labels)}
    labels = torch.tensor([index[s.label] for s in samples])
    own = predictor.preprocessing.input_size[-1]
    reference = logits_at(model, predictor.preprocessing, paths, own).argmax(1)
    rows: list[dict[str, Any]] = []
    for size in [int(s) for s in args.sizes.split(",")]:
        predicted = logits_at(model, predictor.preprocessing, paths, size).argmax(1)
        calib_transform = eval_transform(predictor.preprocessing.model_copy(
            update={"input_size": (3, size, size)}))
        calib = torch.stack([calib_transform(load_rgb(p)[0]) for p in paths[:64]])
        torch_rate = measure_throughput(model, torch.randn(32, 3, size, size), BUDGET)
        row = {"size": size, "tokens": (size // 14) ** 2,
               "accuracy": round(float((predicted == labels).float().mean()), 4),
               "agreement": round(float((predicted == reference).float().mean()), 4),
               "torch_fp32_img_s": round(torch_rate, 1),
               **{f"{k}_img_s": round(v, 1)
                  for k, v in openvino_throughput(model, size, calib).items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"bundle": str(args.bundle), "n_val": len(paths), "rows": rows,
                      "note": "int8 calibrated on 64 val images here (a speed figure; "
                              "vitkit quantize calibrates on training images)"},
                     indent=None, default=float), file=sys.stderr)



if __name__ == "__main__":
    main()
