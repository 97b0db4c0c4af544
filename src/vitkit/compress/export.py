"""Export a classifier to files other runtimes run: ONNX, OpenVINO IR, TorchScript, a phone file.

Each ``export_*`` function takes the fp32 torch model (``ImageClassifier``, eval mode, CPU),
writes its file(s) and returns the options worth recording (opset, exporter, ...). The graph's
input is the *preprocessed* float32 batch ``(B, 3, H, W)`` named ``input``; its output the
logits ``(B, num_classes)`` named ``logits``. The batch axis is dynamic everywhere except in
TFLite files (LiteRT wants static shapes: batch 1).

What was measured on torch 2.14 (CPU) with timm's test_resnet / test_vit / deit_tiny and a
Hugging Face ViT, logits against eager fp32 at batch 1 and 5:

- ONNX: both ``torch.onnx.export`` paths give a correct graph with a dynamic batch (max abs
  diff < 2e-7). The ``torch.export``-based exporter (``dynamo=True``) is used: it is the default
  since torch 2.9 and the TorchScript-based one is deprecated. It is kept as a fallback for
  models ``torch.export`` cannot capture. Opset 18 is the dynamo exporter's own opset (lower
  ones go through the ONNX version converter, which fails on some ops); ONNX Runtime >= 1.14
  and OpenVINO >= 2023.0 read it. The fallback uses 17.
- OpenVINO: ``openvino.convert_model`` from the ONNX file when one was exported in the same
  run (fast), else straight from the torch model (its PyTorch frontend, ``input=[-1, 3, H, W]``
  for a dynamic batch; the ``openvino`` extra then needs no ONNX packages). Both were exact to
  2e-7. Saved with ``compress_to_fp16=False`` so fp32 parity holds (the default stores fp16
  weights).
- TorchScript: ``torch.jit.trace`` (deprecated in favour of ``torch.export`` but still the file
  C++ and older serving stacks load); traced at batch 2 and checked at batch 1 and 3.
- Mobile: a lite-interpreter file (``.ptl``). ``optimize_for_mobile`` needs a torch built with
  XNNPACK; the PyPI Linux builds of torch 2.14 are not (an internal assert), so there the file
  is frozen (``torch.jit.freeze``) but not mobile-optimised, and the record says so.
- TFLite: ``litert-torch`` (0.10, PyPI, offline) converts CNNs and standard ViTs (DeiT) with
  batch 1, parity ~1e-6 on its LiteRT interpreter; it fails on timm ViTs built with
  ``dynamic_img_size`` (no lowering of the antialiased bicubic resize of the position
  embedding). It pulls jax and pins older pydantic, so it is not a vitkit extra.
- Core ML: ``coremltools`` 9.0 converts CNNs and standard ViTs on Linux, but a Core ML model
  only runs on macOS, so vitkit cannot check parity here: a clear error says what to do.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitkit.errors import VitkitError
from vitkit.predictor.runtimes import RuntimeMissing, require

ONNX_OPSET = 18  # the dynamo exporter's native opset; ORT >= 1.14 and OpenVINO read it
LEGACY_ONNX_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_PROTOBUF_LIMIT = 1_800_000_000  # bytes; above this ONNX weights go to an external .data file

# Exports vitkit cannot make, and why (shown as the error message).
COREML_MESSAGE = (
    "Core ML export is not built in. coremltools 9.0 (PyPI) converts vitkit's CNNs and "
    "standard ViTs on Linux (from torch.export; not timm ViTs with dynamic_img_size), but a "
    "Core ML model only runs on macOS, so vitkit cannot check its parity against PyTorch here "
    "and will not store an unchecked model. On a Mac: export ONNX or TorchScript with "
    "`vitkit export BUNDLE --format onnx`, then convert with coremltools "
    "(ct.convert(torch.export.export(model, (x,)).run_decompositions({}), "
    "convert_to='mlprogram')) and check it there; or ship the TorchScript lite file "
    "(`--format mobile`)."
)


def require_module(module: str, install: str) -> Any:
    """Imports an exporter that no vitkit extra installs (LiteRT), or raises
    :class:`RuntimeMissing` with ``install``; the extras go through :func:`runtimes.require`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeMissing(f"{module} is not installed; {install} to use it.") from exc


def example_input(input_size: Sequence[int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded random preprocessed batch. Batch 2, not 1: tracers specialise a size-1 axis."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *input_size, generator=generator)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Keeps exporters' chatter off stdout (``--json`` owns it) and their deprecation and
    tracer warnings off the user's screen; yields what they printed, for error messages."""
    captured = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
        warnings.simplefilter("ignore")
        yield captured


# --------------------------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, path: Path, input_size: Sequence[int],
                opset: int | None = None, outputs: int = 1, size_multiple: int | None = None,
                exporters: Sequence[str] = ("dynamo", "torchscript")) -> dict[str, Any]:
    """Writes an ONNX graph with a dynamic batch axis; returns ``{"opset", "exporter", ...}``.

    ``exporters`` are tried in order: ``dynamo`` (``torch.export``) and ``torchscript`` (the
    deprecated TorchScript-based exporter). A model with several outputs (a tuple) names them
    ``logits0``, ``logits1``, … With ``size_multiple`` the height and width are dynamic too,
    any multiple of it (a dense model such as a segmenter, whose decoder needs sides divisible
    by its output stride).
    """
    require("onnx")
    model = model.eval()
    x = example_input(input_size)
    names = [OUTPUT_NAME] if outputs == 1 else [f"{OUTPUT_NAME}{i}" for i in range(outputs)]
    external = _parameter_bytes(model) > _PROTOBUF_LIMIT
    failures: list[str] = []
    for exporter in exporters:
        try:
            chosen = _export_onnx_with(exporter, model, x, path, names, opset, size_multiple,
                                       external)
        except Exception as exc:  # noqa: BLE001 - any capture failure: try the next exporter
            failures.append(f"{exc} ({exporter})")
            continue
        options: dict[str, Any] = {
            "opset": chosen, "exporter": exporter, "dynamic_batch": True,
            "input_name": INPUT_NAME, "output_name": names[0] if outputs == 1 else names,
            "external_data": external}
        if size_multiple:
            options.update(dynamic_size=True, size_multiple=size_multiple)
        return options
    raise VitkitError(f"ONNX export failed: {'; '.join(failures)}.")


def _export_onnx_with(exporter: str, model: nn.Module, x: torch.Tensor, path: Path,
                      names: list[str], opset: int | None, size_multiple: int | None,
                      external: bool) -> int:
    """One exporter's attempt; returns the opset it wrote."""
    if exporter == "dynamo":
        require("onnxscript")
        chosen = opset or ONNX_OPSET
        axes: dict[int, Any] = {0: torch.export.Dim("batch")}
        if size_multiple:  # sides = multiple * n, n up to 2048 px / multiple
            top = max(2, 2048 // size_multiple)
            axes[2] = size_multiple * torch.export.Dim("height_steps", min=1, max=top)
            axes[3] = size_multiple * torch.export.Dim("width_steps", min=1, max=top)
        with _quiet(), torch.no_grad():
            torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME],
                              output_names=names, opset_version=chosen,
                              dynamic_shapes=(axes,), dynamo=True,
                              external_data=external, verbose=False)
        return chosen
    if exporter != "torchscript":
        raise ValueError(f"unknown ONNX exporter {exporter!r}")
    chosen = opset or LEGACY_ONNX_OPSET
    dims = {0: "batch", 2: "height", 3: "width"} if size_multiple else {0: "batch"}
    with _quiet(), torch.no_grad():
        torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME],
                          output_names=names, opset_version=chosen,
                          dynamic_axes={INPUT_NAME: dims, **{name: dims for name in names}},
                          dynamo=False)
    return chosen


def _parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ----------------------------------------------------------------------------- OpenVINO


def export_openvino(model: nn.Module, path_xml: Path, input_size: Sequence[int],
                    onnx_file: Path | None = None) -> dict[str, Any]:
    """Writes OpenVINO IR (``model.xml`` + ``model.bin``, fp32 weights, dynamic batch).

    From ``onnx_file`` when one was just exported (its batch axis is already dynamic; this is
    3-5x faster here than tracing again), else from the torch model.
    """
    ov = require("openvino")
    with _quiet(), torch.no_grad():
        if onnx_file is not None:
            converted = ov.convert_model(str(onnx_file))
        else:
            converted = to_openvino(model, input_size)
        converted.inputs[0].get_tensor().set_names({INPUT_NAME})
        converted.outputs[0].get_tensor().set_names({OUTPUT_NAME})
        ov.save_model(converted, str(path_xml), compress_to_fp16=False)
    return {"dynamic_batch": True, "frontend": "onnx" if onnx_file else "pytorch",
            "compress_to_fp16": False, "openvino": str(ov.__version__).split("-")[0]}


def to_openvino(model: nn.Module, input_size: Sequence[int]) -> Any:
    """The torch model as an in-memory OpenVINO model with a dynamic batch axis."""
    ov = require("openvino")
    with _quiet(), torch.no_grad():
        return ov.convert_model(model.float().eval(), example_input=example_input(input_size),
                                input=[(-1, 3, *input_size)])


# -------------------------------------------------------------------------- TorchScript


def trace(model: nn.Module, input_size: Sequence[int]) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` at batch 2, checked against eager at batch 1 (a trace that baked
    the batch size in, or took a data-dependent branch, shows up here)."""
    model = model.eval()
    check = example_input(input_size, 1, seed=1)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, example_input(input_size), check_trace=False)
        expected, got = model(check), traced(check)
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
        raise VitkitError("the TorchScript trace of this model does not reproduce it at batch "
                          "1 (its forward depends on the input's shape or values); use "
                          "--format onnx or openvino instead.")
    return traced


def export_torchscript(model: nn.Module, path: Path, input_size: Sequence[int]
                       ) -> dict[str, Any]:
    """Writes a traced TorchScript file (loaded by ``torch.jit.load`` and LibTorch)."""
    traced = trace(model, input_size)
    with _quiet():
        traced.save(str(path))
    return {"dynamic_batch": True, "method": "trace", "torch": torch.__version__}


# ------------------------------------------------------------------------------- Mobile


def xnnpack_available() -> bool:
    """Whether this torch build can run ``optimize_for_mobile`` (needs XNNPACK)."""
    check = getattr(torch._C, "_is_xnnpack_enabled", None)
    return bool(check()) if check is not None else False


def export_mobile(model: nn.Module, path: Path, input_size: Sequence[int]) -> dict[str, Any]:
    """Writes a TorchScript lite-interpreter file (``.ptl``) for PyTorch Mobile.

    ``optimize_for_mobile`` when this torch has XNNPACK; otherwise the frozen graph (same
    numbers, without the mobile-specific rewrites).
    """
    traced = trace(model, input_size)
    optimized = xnnpack_available()
    with _quiet():
        if optimized:
            from torch.utils.mobile_optimizer import optimize_for_mobile

            mobile = optimize_for_mobile(traced)
        else:
            mobile = torch.jit.freeze(traced.eval())
        mobile._save_for_lite_interpreter(str(path))
    options: dict[str, Any] = {"dynamic_batch": True, "format": "torchscript-lite",
                               "optimize_for_mobile": optimized}
    if not optimized:
        options["note"] = ("this torch build has no XNNPACK, so optimize_for_mobile could not "
                           "run; the file is frozen but not mobile-optimised. Export with a "
                           "torch build that has XNNPACK (e.g. the macOS or CPU wheels) for "
                           "the optimised file.")
    return options


class LiteRunner:
    """Runs a ``.ptl`` file with the lite interpreter (as a phone would), for parity checks."""

    def __init__(self, path: Path) -> None:
        from torch.jit.mobile import _load_for_lite_interpreter

        with _quiet():
            self.module = _load_for_lite_interpreter(str(path))

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with _quiet():
            return self.module(batch.cpu()).float()


# ------------------------------------------------------------------------------- TFLite

_LITERT_INSTALL = ("pip install litert-torch (best in a separate environment: it pulls jax "
                   "and pins an older pydantic)")


def export_tflite(model: nn.Module, path: Path, input_size: Sequence[int]) -> dict[str, Any]:
    """Writes a TFLite (LiteRT) flatbuffer with ``litert-torch``; batch fixed at 1."""
    litert_torch = require_module("litert_torch", _LITERT_INSTALL)
    model = model.eval()
    try:
        with _quiet(), torch.no_grad():
            converted = litert_torch.convert(model, (example_input(input_size, 1),))
            converted.export(str(path))
    except Exception as exc:  # noqa: BLE001 - the converter's errors are many and deep
        raise VitkitError(
            f"litert-torch could not convert this model: {str(exc).splitlines()[0][:300]}. "
            "It handles CNNs and standard ViTs (e.g. deit_tiny_patch16_224) but not timm ViTs "
            "built with dynamic_img_size. Use --format onnx or mobile instead.") from exc
    return {"dynamic_batch": False, "batch": 1, "format": "tflite",
            "converter": f"litert-torch {getattr(litert_torch, '__version__', '')}".strip()}


class TfliteRunner:
    """Runs a ``.tflite`` file with the LiteRT interpreter, one image at a time (batch 1)."""

    def __init__(self, path: Path) -> None:
        interpreter_module = require_module("ai_edge_litert.interpreter", _LITERT_INSTALL)
        self.interpreter = interpreter_module.Interpreter(model_path=str(path))
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        rows = []
        for image in batch.detach().cpu().numpy().astype(np.float32):
            self.interpreter.set_tensor(self.input_index, image[None])
            self.interpreter.invoke()
            rows.append(np.array(self.interpreter.get_tensor(self.output_index)))
        return torch.from_numpy(np.concatenate(rows).astype(np.float32))


def export_coreml(model: nn.Module, path: Path, input_size: Sequence[int]) -> dict[str, Any]:
    """Not built in: see :data:`COREML_MESSAGE`."""
    raise VitkitError(COREML_MESSAGE)


# ---------------------------------------------------------------------- atomic writing


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A private staging folder inside ``folder``; on success its files replace those of the
    same names in ``folder`` (data files before the files that reference them), so a reader
    never sees half an export. On failure nothing in ``folder`` changes."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        yield staging
        names = sorted((p.name for p in staging.iterdir()), key=_reference_order)
        for name in names:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _reference_order(name: str) -> tuple[int, str]:
    """Weights (``.bin``, ``.data``) first, then the graphs that point at them."""
    return (0 if name.endswith((".bin", ".data")) else 1, name)


Exporter = Callable[[nn.Module, Path, Sequence[int]], dict[str, Any]]
