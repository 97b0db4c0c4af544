"""One callable over every runtime: ``runtime(batch) -> logits``.

A :class:`Runtime` takes a preprocessed float32 batch ``(B, 3, H, W)`` (torch) and returns
float32 logits ``(B, num_classes)`` on the CPU, whatever executes it: PyTorch eager (fp32, bf16 /
fp16 autocast, dynamic int8), TorchScript, ONNX Runtime or OpenVINO. Everything downstream
(eval, predict, bench, serve) sees only this interface. A graph with several outputs (an
anomaly bundle's feature maps, a detector's boxes and scores) is read whole with
:meth:`Runtime.outputs`; ``runtime(batch)`` is its first output.

The optional runtimes are imported lazily; a missing one is a clear error naming the pip extra
(:func:`require`).
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from vitkit.errors import BundleError, VitkitError, first_line
from vitkit.predictor.variants import Variant, variant_path

# Runtime -> (module to import, pip extra that installs it).
EXTRAS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "openvino"),
    "onnx": ("onnx", "onnx"),
    "onnxscript": ("onnxscript", "onnx"),
    "nncf": ("nncf", "openvino"),
}


class RuntimeMissing(VitkitError):
    """An optional runtime is not installed."""


# Runtime -> the module that must import for it to run.
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def require(module: str) -> Any:
    """Imports an optional runtime module, or raises :class:`RuntimeMissing` with the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module, (module, module))[1]
        raise RuntimeMissing(f"{module} is not installed; pip install 'vitkit[{extra}]' "
                             "to use it.") from exc


def available(module: str) -> bool:
    """Whether an optional runtime can be imported."""
    try:
        require(module)
    except RuntimeMissing:
        return False
    return True


class Runtime(Protocol):
    """``runtime(batch) -> logits``; ``name``, ``runtime`` and ``precision`` describe it."""

    name: str
    runtime: str
    precision: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

    def outputs(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the graph, in its order (float32, on the CPU)."""
        ...


def _as_list(result: Any) -> list[torch.Tensor]:
    """A model's output (a tensor, or a tuple / list of them) as a list of float32 tensors."""
    if isinstance(result, torch.Tensor):
        return [result.float().cpu()]
    return [t.float().cpu() for t in result]


class TorchRuntime:
    """PyTorch eager: fp32, bf16/fp16 autocast, or dynamic int8 (Linear layers, CPU)."""

    runtime = "torch"

    def __init__(self, model: nn.Module, precision: str = "fp32", device: str = "cpu",
                 name: str | None = None) -> None:
        self.device = torch.device(device)
        self.precision = precision
        self.name = name or f"torch-{precision}"
        model = model.eval()
        if precision == "int8":
            if self.device.type != "cpu":
                raise VitkitError("dynamic int8 runs on the CPU only; use --device cpu.")
            from torch.ao.quantization import quantize_dynamic

            with warnings.catch_warnings():  # torch announces a move to torchao; still works
                warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
                model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        self.model = model.to(self.device)
        self._autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.outputs(batch)[0]

    @torch.inference_mode()
    def outputs(self, batch: torch.Tensor) -> list[torch.Tensor]:
        batch = batch.to(self.device)
        if self._autocast is None:
            return _as_list(self.model(batch))
        with torch.autocast(self.device.type, dtype=self._autocast):
            return _as_list(self.model(batch))


class TorchScriptRuntime:
    """A TorchScript file written by ``vitkit export`` (runs its own graph, no Python model)."""

    runtime = "torchscript"

    def __init__(self, path: Path, precision: str = "fp32", name: str = "torchscript-fp32"
                 ) -> None:
        self.name, self.precision = name, precision
        with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit; it still works
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.outputs(batch)[0]

    @torch.inference_mode()
    def outputs(self, batch: torch.Tensor) -> list[torch.Tensor]:
        return _as_list(self.module(batch.cpu()))


class OnnxRuntime:
    """ONNX Runtime on the CPU."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, precision: str = "fp32", name: str = "onnx-fp32",
                 threads: int | None = None) -> None:
        ort = require("onnxruntime")
        self.name, self.precision = name, precision
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self._first = [self.session.get_outputs()[0].name]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(self._first, {self.input_name: array})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))

    def outputs(self, batch: torch.Tensor) -> list[torch.Tensor]:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return [torch.from_numpy(np.asarray(o, dtype=np.float32))
                for o in self.session.run(None, {self.input_name: array})]


class OpenVinoRuntime:
    """OpenVINO on the CPU; ``precision`` picks the inference precision hint (int8 models
    run their int8 parts as int8 whatever the hint; bf16 is the hint for the rest).

    The stored model has a dynamic batch (a segmenter's also a dynamic height and width); the
    first input shapes seen get a model compiled for exactly that shape (measured on DeiT-tiny
    int8, 2 cores: 5.8 against 7.0 ms at batch 1, 260 against 230 img/s at batch 32), up to
    ``static_shapes`` of them; other shapes run on the dynamic model.
    """

    runtime = "openvino"

    def __init__(self, path: Path, precision: str = "fp32", name: str = "openvino-fp32",
                 threads: int | None = None, static_shapes: int = 4) -> None:
        ov = require("openvino")
        self.name, self.precision = name, precision
        self._core = ov.Core()
        self._path = str(path)
        self._config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
        }
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = self._core.compile_model(self._core.read_model(self._path), "CPU",
                                                 self._config)
        self.request = self.compiled.create_infer_request()
        self._static_shapes = static_shapes
        self._by_shape: dict[tuple[int, ...], Any] = {}

    def _request_for(self, shape: tuple[int, ...]) -> Any:
        if shape in self._by_shape:  # the whole shape: a graph may take several heights
            return self._by_shape[shape]
        if len(self._by_shape) >= self._static_shapes:
            return self.request
        model = self._core.read_model(self._path)
        try:
            model.reshape(list(shape))
            request = self._core.compile_model(model, "CPU", self._config).create_infer_request()
        except RuntimeError:  # a graph that cannot take a static shape: stay dynamic
            request = self.request
        self._by_shape[shape] = request
        return request

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.outputs(batch)[0]

    def outputs(self, batch: torch.Tensor) -> list[torch.Tensor]:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        result = self._request_for(array.shape).infer({0: array})
        return [torch.from_numpy(np.array(o, dtype=np.float32)) for o in result.to_tuple()]


def open_runtime(bundle: Path | str, variant: Variant, model: nn.Module | None,
                 device: str = "cpu", threads: int | None = None) -> Runtime:
    """The runtime that executes ``variant``. ``model`` is the bundle's torch model (needed
    for the torch variants only)."""
    if variant.runtime == "torch":
        if model is None:
            raise VitkitError(f"variant {variant.name} needs the torch model")
        return TorchRuntime(model, variant.precision, device, variant.name)
    path = variant_path(bundle, variant)  # inside the bundle folder, or a BundleError
    try:
        if variant.runtime == "torchscript":
            return TorchScriptRuntime(path, variant.precision, variant.name)
        if variant.runtime == "onnxruntime":
            return OnnxRuntime(path, variant.precision, variant.name, threads)
        if variant.runtime == "openvino":
            return OpenVinoRuntime(path, variant.precision, variant.name, threads)
    except VitkitError:
        raise  # e.g. the runtime is not installed: its own message names the pip extra
    except Exception as exc:  # noqa: BLE001 - each runtime has its own errors for a bad file
        first = first_line(exc)
        raise BundleError(
            f"{path}: {variant.runtime} cannot load the file of variant {variant.name} "
            f"({type(exc).__name__}: {first}); it is damaged or not a {variant.runtime} "
            "model. Export the variant again (`vitkit export`, `vitkit quantize`)."
        ) from exc
    raise VitkitError(f"unknown runtime {variant.runtime!r} in variant {variant.name}")

