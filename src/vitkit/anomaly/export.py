"""An anomaly bundle's feature extractor on OpenVINO or ONNX Runtime, with equal scores.

Only the backbone runs elsewhere: the memory bank, the Gaussians and every score stay in the
bundle's own code, so an exported variant scores with the same math as PyTorch (anomalib users
report exported models whose scores differ from the checkpoint: here the parity is measured
at export and recorded). The exported graph returns the same list of feature maps as
:class:`~vitkit.anomaly.features.FeatureExtractor`, largest grid first.

Variants (``anomaly.variants`` in ``vitkit.json``, files under ``BUNDLE/variants/``):
``openvino-fp32`` and ``openvino-bf16`` (one OpenVINO IR, two precision hints) and
``onnx-fp32``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitkit.bundle import bundle_file
from vitkit.errors import BundleError, VitkitError
from vitkit.predictor.runtimes import require

VARIANTS: dict[str, tuple[str, str, str]] = {
    # name: (runtime, precision, file inside the bundle)
    "openvino-fp32": ("openvino", "fp32", "variants/anomaly-features.xml"),
    "openvino-bf16": ("openvino", "bf16", "variants/anomaly-features.xml"),
    "onnx-fp32": ("onnxruntime", "fp32", "variants/anomaly-features.onnx"),
}
REFERENCE = "torch-fp32"  # the bundle's own PyTorch extractor


class TupleOutput(nn.Module):
    """The extractor with a tuple of maps as output (what exporters take)."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.extractor(images))


class ExportedExtractor(nn.Module):
    """``images -> [maps]`` from an exported graph; a drop-in for the torch extractor."""

    def __init__(self, path: Path, runtime: str, precision: str,
                 threads: int | None = None) -> None:
        super().__init__()
        self.runtime, self.precision = runtime, precision
        if runtime == "openvino":
            ov = require("openvino")
            config: dict[str, Any] = {
                "INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
            self._request = self._compiled.create_infer_request()
        elif runtime == "onnxruntime":
            ort = require("onnxruntime")
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
            self._session = ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"])
        else:
            raise VitkitError(f"unknown runtime {runtime!r} for anomaly features")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        if self.runtime == "openvino":
            result = self._request.infer({0: array})
            outputs = [result[port] for port in self._compiled.outputs]
        else:
            outputs = self._session.run(None, {self._session.get_inputs()[0].name: array})
        return [torch.from_numpy(np.array(o, dtype=np.float32)) for o in outputs]


def export_features(extractor: nn.Module, bundle: Path, name: str,
                    input_size: tuple[int, int]) -> str:
    """Writes the extractor's graph for variant ``name`` into the bundle (atomically); returns
    the file's path relative to the bundle."""
    from vitkit.compress.export import export_onnx, staged, to_openvino

    if name not in VARIANTS:
        raise VitkitError(f"unknown anomaly variant {name!r}; choose from "
                          f"{', '.join(VARIANTS)}")
    runtime, _, relative = VARIANTS[name]
    target = bundle / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    model = TupleOutput(extractor).eval()
    with torch.no_grad():
        n_maps = len(extractor(torch.zeros(1, 3, *input_size)))
    with staged(target.parent) as folder:
        built = folder / target.name
        if runtime == "openvino":
            ov = require("openvino")
            ov.save_model(to_openvino(model, input_size), str(built), compress_to_fp16=False)
        else:
            export_onnx(model, built, input_size, outputs=n_maps)
    return relative


def open_variant(bundle: Path, record: dict[str, Any], name: str,
                 threads: int | None = None) -> ExportedExtractor:
    """The exported extractor of variant ``name``; a clear error when it was never made."""
    made = {v["name"]: v for v in record.get("variants", [])}
    if name not in made:
        available = ", ".join([REFERENCE, *made]) or REFERENCE
        raise BundleError(f"{bundle} has no anomaly variant {name!r} (available: {available}). "
                          f"Make it with `vitkit anomaly export {bundle} --variant {name}`.")
    entry = made[name]
    # Inside the bundle folder only: an edited entry must not open a model from elsewhere.
    path = bundle_file(bundle, entry.get("file"), f"file of anomaly variant {name}")
    if not path.exists():
        raise BundleError(f"{bundle}: the file {entry['file']} of variant {name} is missing; "
                          "export it again.")
    return ExportedExtractor(path, entry["runtime"], entry["precision"], threads)
