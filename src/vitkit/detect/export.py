"""A detector's :class:`~vitkit.detect.graph.DetectorGraph` as an ONNX file with a dynamic
batch, height and width, and as OpenVINO IR converted from that file.

Why not the whole torchvision detector: its top-k, score threshold, NMS and (Faster R-CNN)
proposals make the graph's shapes depend on the image's content. The graph without them
(torch 2.14, torchvision 0.29; FCOS, RetinaNet and Faster R-CNN on efficientnet_lite0)
exports cleanly with both of torch's exporters and matches PyTorch to ~1e-5, also at sizes
other than the one it was traced at; the decoding stays Python
(:func:`vitkit.detect.graph.decode`), the same code for every runtime.

The example input is at least twice the coarsest level's stride per side: an axis that is 1
in the example gets specialised (at 96 px FCOS's P7 map is 1x1), which would fix that
output's shape in the graph.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from vitkit.detect.graph import DetectorGraph
from vitkit.errors import VitkitError, first_line
from vitkit.predictor.runtimes import require
from vitkit.predictor.variants import Variant

ONNX_OPSET = 18  # the dynamo exporter's own; ONNX Runtime >= 1.14 reads it
LEGACY_ONNX_OPSET = 17
INPUT_NAME = "images"
ONNX_FILE = "variants/detector.onnx"
OPENVINO_FILE = "variants/openvino/detector.xml"


def onnx_variant() -> Variant:
    """The ``onnx-fp32`` variant's entry (its parity is added when measured)."""
    return Variant(name="onnx-fp32", runtime="onnxruntime", precision="fp32", file=ONNX_FILE,
                   options={"outputs": "all", "graph": "detector",
                            "decoding": "python (anchors, box coding, NMS: torchvision's)",
                            "input": "RGB 0..1 (B, 3, H, W), any H and W",
                            "dynamic_axes": ["batch", "height", "width"]})


def openvino_variant() -> Variant:
    """The ``openvino-fp32`` variant's entry: the ONNX graph converted, same inputs and
    outputs, so the same Python decoding follows it."""
    onnx = onnx_variant()
    return Variant(name="openvino-fp32", runtime="openvino", precision="fp32",
                   file=OPENVINO_FILE, options=dict(onnx.options))


def output_names(graph: DetectorGraph, levels: int) -> list[str]:
    kinds = {"fcos": ("cls", "box", "ctr"), "retinanet": ("cls", "box"),
             "fasterrcnn": ("features",)}[graph.arch]
    return [f"{kind}{level}" for level in range(levels) for kind in kinds]


def export_graph(graph: DetectorGraph, path: Path, size: int) -> dict[str, Any]:
    """Writes ``graph`` to ``path`` (ONNX); returns the options worth recording.

    The TorchScript-based exporter first, ``torch.export``'s if that fails (or once torch
    drops the older one). Both give the same graph here (outputs within 1e-5 of PyTorch at
    96, 96x70 and 128x160 px), but on FCOS-lite0 the TorchScript one took 4 s and
    ``torch.export``'s 20-30 s, most of it in its decompositions: the choice is measured, not
    a preference (``vitkit export`` of classifiers, whose graphs trace in seconds either way,
    uses ``torch.export`` first).
    """
    require("onnx")
    graph = graph.eval()
    side = max(size, 2 * _coarsest_stride(graph))
    example = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        n_outputs = len(graph(example))
    names = output_names(graph, n_outputs // graph.outputs_per_level)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            **{name: {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} for name in names}}
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=names, opset_version=LEGACY_ONNX_OPSET,
                              dynamic_axes=axes, dynamo=False)
        exporter, opset = "torchscript", LEGACY_ONNX_OPSET
    except Exception as first:  # noqa: BLE001 - any tracing failure: try torch.export
        try:
            require("onnxscript")
            # Dim.DYNAMIC: the level grids guard sizes (a 1x1 P7 below 129 px) that a
            # fixed min would violate; ONNX Runtime computes every size the same way.
            dynamic = torch.export.Dim.DYNAMIC
            with _quiet(), torch.no_grad():
                torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME],
                                  output_names=names, opset_version=ONNX_OPSET,
                                  dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},),
                                  dynamo=True, verbose=False)
        except Exception as second:  # noqa: BLE001
            raise VitkitError(f"ONNX export of the detector failed: {first_line(first)} "
                              f"(TorchScript exporter) and {first_line(second)} "
                              "(torch.export).") from second
        exporter, opset = "dynamo", ONNX_OPSET
    return {"opset": opset, "exporter": exporter, "input_name": INPUT_NAME,
            "output_names": names, "traced_at": side}


def convert_to_openvino(onnx_file: Path, path_xml: Path) -> dict[str, Any]:
    """OpenVINO IR (``.xml`` + ``.bin``, fp32 weights) from the detector's ONNX file; its
    dynamic batch, height and width and its output names and order carry over."""
    ov = require("openvino")
    with _quiet():
        converted = ov.convert_model(str(onnx_file))
        ov.save_model(converted, str(path_xml), compress_to_fp16=False)
    return {"frontend": "onnx", "compress_to_fp16": False,
            "openvino": str(ov.__version__).split("-")[0]}


def _coarsest_stride(graph: DetectorGraph) -> int:
    strides = graph.model.backbone.strides
    extra = 1 if graph.arch == "fasterrcnn" else 2  # P6 (and P7), or the pooled level
    return int(strides[-1] * 2 ** extra)


@contextlib.contextmanager
def _quiet() -> Any:
    """Exporters print and warn a lot; ``--json`` owns stdout."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
