"""The runtimes' own int8 quantizers, wrapped: NNCF for OpenVINO, ONNX Runtime's dynamic and
static (QDQ) quantization. Model files in, quantized model out; which one runs, and whether
its result is kept, is decided by :mod:`vitkit.compress.quantize`.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.compress.export import INPUT_NAME
from vitkit.errors import DataError
from vitkit.predictor.runtimes import require


def quantize_openvino(ov_model: Any, calib: Sequence[np.ndarray], transformer: bool) -> Any:
    """NNCF post-training int8: the transformer preset (mixed, SmoothQuant) for ViTs, the
    performance preset (symmetric) for CNNs."""
    nncf = require("nncf")
    if not calib:
        raise DataError("static int8 needs calibration images")
    kwargs: dict[str, Any] = {"subset_size": len(calib)}
    if transformer:
        kwargs |= {"model_type": nncf.ModelType.TRANSFORMER,
                   "preset": nncf.QuantizationPreset.MIXED}
    else:
        kwargs["preset"] = nncf.QuantizationPreset.PERFORMANCE
    # NNCF draws its progress bars on stdout, which belongs to --json: move them to stderr.
    with _quiet(), contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(ov_model, nncf.Dataset(list(calib)), **kwargs)


def quantize_onnx_dynamic(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic int8: int8 weights, activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(source), str(target), per_channel=True,
                         weight_type=QuantType.QInt8)


def pre_process_onnx(source: Path, scratch: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimisation); the
    fp32 graph itself when it fails, as quantization works without it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / "model.prep.onnx"
    with _quiet():
        try:
            quant_pre_process(str(source), str(prepared))
        except Exception:  # noqa: BLE001 - pre-processing only helps
            return source
    return prepared


def quantize_onnx_static(source: Path, target: Path, calib: Sequence[np.ndarray],
                         transformer: bool) -> list[str] | None:
    """ONNX Runtime static int8 in QDQ format, per-channel weights, calibrated (MinMax) on
    ``calib``. ViTs quantize only their matrix products (LayerNorm, Softmax and GELU stay
    fp32, as ONNX Runtime's transformer recipes do). Returns the op types quantized (None:
    every supported one)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calib:
        raise DataError("static int8 needs calibration images")
    ops = ["Conv", "MatMul", "Gemm"] if transformer else None

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items = iter([{INPUT_NAME: array} for array in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    reader = Reader()
    with _quiet():
        quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=ops)
    return ops


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences the converters' warnings (tracer, deprecation) that users cannot act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
