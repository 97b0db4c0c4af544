"""An anomaly bundle's feature extractor on OpenVINO or ONNX Runtime, with equal scores.

Only the backbone runs elsewhere: the memory bank, the Gaussians and every score stay in the
bundle's own code, so an exported variant scores with the same math as PyTorch (anomalib users
report exported models whose scores differ from the checkpoint: here the parity is measured
at export and recorded). The exported graph returns the same list of feature maps as
:class:`~vitkit.anomaly.features.FeatureExtractor`, largest grid first.

An exported extractor is an ordinary :class:`~vitkit.predictor.variants.Variant` (recorded
under ``anomaly.variants`` in ``vitkit.json``, files under ``BUNDLE/variants/``) run by the
runtimes of :mod:`vitkit.predictor.runtimes`; ``options.outputs = "all"`` marks a graph read
as a whole (one output per feature map). Made here: ``openvino-fp32`` and ``openvino-bf16``
(one OpenVINO IR, two precision hints) and ``onnx-fp32``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from vitkit.bundle import META_FILE, describe_validation_error
from vitkit.errors import BundleError, VitkitError
from vitkit.predictor.runtimes import Runtime, open_runtime, require
from vitkit.predictor.variants import Variant

_ALL_OUTPUTS = {"outputs": "all"}
VARIANTS: dict[str, Variant] = {
    "openvino-fp32": Variant(name="openvino-fp32", runtime="openvino", precision="fp32",
                             file="variants/anomaly-features.xml", options=_ALL_OUTPUTS),
    "openvino-bf16": Variant(name="openvino-bf16", runtime="openvino", precision="bf16",
                             file="variants/anomaly-features.xml", options=_ALL_OUTPUTS),
    "onnx-fp32": Variant(name="onnx-fp32", runtime="onnxruntime", precision="fp32",
                         file="variants/anomaly-features.onnx", options=_ALL_OUTPUTS),
}
REFERENCE = "torch-fp32"  # the bundle's own PyTorch extractor


class TupleOutput(nn.Module):
    """The extractor with a tuple of maps as output (what exporters take)."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.extractor(images))


class RuntimeExtractor(nn.Module):
    """``images -> [maps]`` from a variant's runtime; a drop-in for the torch extractor."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.runtime.outputs(images)


def export_features(extractor: nn.Module, bundle: Path, name: str,
                    input_size: tuple[int, int]) -> str:
    """Writes the extractor's graph for variant ``name`` into the bundle (atomically); returns
    the file's path relative to the bundle."""
    from vitkit.compress.export import export_onnx, staged, to_openvino

    variant = template(name)
    assert variant.file is not None
    target = bundle / variant.file
    target.parent.mkdir(parents=True, exist_ok=True)
    model = TupleOutput(extractor).eval()
    with torch.no_grad():
        n_maps = len(extractor(torch.zeros(1, 3, *input_size)))
    with staged(target.parent) as folder:
        built = folder / target.name
        if variant.runtime == "openvino":
            ov = require("openvino")
            ov.save_model(to_openvino(model, input_size), str(built), compress_to_fp16=False)
        else:
            export_onnx(model, built, input_size, outputs=n_maps)
    return variant.file


def template(name: str) -> Variant:
    """The variant ``vitkit anomaly export`` makes for ``name``; a clear error otherwise."""
    if name not in VARIANTS:
        raise VitkitError(f"unknown anomaly variant {name!r}; choose from "
                          f"{', '.join(VARIANTS)}")
    return VARIANTS[name]


def recorded_variants(bundle: Path | str, record: dict[str, Any]) -> list[Variant]:
    """The variants in an anomaly record, validated (an edited entry is a clear error)."""
    entries = record.get("variants") or []
    if not isinstance(entries, list):
        raise BundleError(
            f"{Path(bundle) / META_FILE}: anomaly.variants is a {type(entries).__name__}, not a "
            "list of variants, so the anomaly model cannot be restored with them. Remove the "
            "key and make the variants again with `vitkit anomaly export`.")
    variants = []
    for index, entry in enumerate(entries):
        try:
            variants.append(Variant.model_validate(entry))
        except ValidationError as exc:
            name = entry.get("name", "no name") if isinstance(entry, dict) else "no name"
            raise BundleError(
                f"{Path(bundle) / META_FILE}: anomaly.variants[{index}] ({name!r}) is not a "
                f"valid variant: {describe_validation_error(exc)}. Make it again with "
                "`vitkit anomaly export`.") from exc
    return variants


def open_extractor(bundle: Path | str, variant: Variant,
                   threads: int | None = None) -> RuntimeExtractor:
    """The exported extractor of ``variant``, its file confined to the bundle folder."""
    return RuntimeExtractor(open_runtime(bundle, variant, None, threads=threads))


def open_variant(bundle: Path | str, record: dict[str, Any], name: str,
                 threads: int | None = None) -> RuntimeExtractor:
    """The exported extractor of variant ``name``; a clear error when it was never made."""
    made = {v.name: v for v in recorded_variants(bundle, record)}
    if name not in made:
        available = ", ".join([REFERENCE, *made])
        raise BundleError(f"{bundle} has no anomaly variant {name!r} (available: {available}). "
                          f"Make it with `vitkit anomaly export {bundle} --variant {name}`.")
    return open_extractor(bundle, made[name], threads)
