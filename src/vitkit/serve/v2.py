"""The Open Inference Protocol v2 (KServe, Triton) subset, with the binary tensor extension,
so ``tritonclient`` works with its defaults.

Routes: ``GET /v2`` (server metadata), ``/v2/health/live|ready``, ``/v2/models/{name}[/versions
/{v}]`` (metadata), ``…/ready`` and ``POST …/infer``. Inputs: ``input`` FP32 [B, 3, H, W]
(preprocessed, finite) or ``image`` BYTES [B] (image files: base64 strings in JSON, raw bytes
in the binary extension). Outputs: ``label`` BYTES, ``score`` FP32 and, for classifiers,
``unknown`` BOOL; binary when the request asks (``binary_data_output`` or an output's
``binary_data``). Errors are the protocol's ``{"error"}`` body (with vitkit's ``detail``).

Binary extension: the request's ``Inference-Header-Content-Length`` header gives the length of
its JSON part; the tensors follow in input order, each ``parameters.binary_data_size`` bytes
(FP32 little-endian; BYTES as 4-byte little-endian length + bytes per element). Responses use
the same layout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from vitkit.serve.batcher import Overloaded
from vitkit.serve.errors import RETRY_AFTER_S, HttpProblem
from vitkit.serve.schemas import (
    MAX_V2_ELEMENTS,
    V2Error,
    V2Request,
    V2Response,
    V2Tensor,
    parse,
    request_body,
)
from vitkit.serve.service import ModelFailure, RequestTooLarge, Service
from vitkit.version import __version__

HEADER_LENGTH = "Inference-Header-Content-Length"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": text}
    for status, text in ((400, "bad request"), (404, "unknown model or version"),
                         (413, "too large"), (415, "unsupported content"),
                         (422, "invalid tensor"), (503, "not ready or overloaded"))}
# The binary extension, declared so that clients and the schema fuzzer know it: an
# octet-stream body whose first Inference-Header-Content-Length bytes are the JSON request,
# and an octet-stream answer laid out the same way.
_INFER_BODY = {**request_body(V2Request, "application/octet-stream"), "parameters": [
    {"name": HEADER_LENGTH, "in": "header", "required": False,
     "schema": {"type": "string", "pattern": "^[0-9]+$"},
     "description": "binary extension: byte length of the JSON part of the body"}]}
_INFER_ANSWERS: dict[int | str, dict[str, Any]] = {200: {
    "model": V2Response, "description": "the outputs (JSON, or JSON header + binary tensors)",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {HEADER_LENGTH: {"schema": {"type": "string"}, "description":
                                "byte length of the JSON part (binary answers only)"}}}}


def v2_router(service: Service, max_bytes: int, read_body: Any, decode: Any) -> APIRouter:
    """The v2 routes over ``service``; ``read_body(request, max_bytes)`` reads a bounded body
    and ``decode(data, name)`` turns image bytes into a PIL image (both from the app)."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"], responses=_ERRORS)
    limits = service.config.limits

    @router.api_route("", methods=["GET", "HEAD"])
    async def server_metadata() -> dict[str, Any]:
        return {"name": "vitkit", "version": __version__, "extensions": ["binary_tensor_data"]}

    @router.api_route("/health/live", methods=["GET", "HEAD"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.api_route("/health/ready", methods=["GET", "HEAD"])
    async def ready() -> JSONResponse:
        ok = service.ready and not service.draining
        return JSONResponse({"ready": ok}, 200 if ok else 503)

    @router.get("/models/{name}")
    async def metadata(name: str) -> dict[str, Any]:
        return _metadata(_model(service, name, None))

    @router.get("/models/{name}/versions/{version}")
    async def metadata_of_version(name: str, version: str) -> dict[str, Any]:
        return _metadata(_model(service, name, version))

    @router.api_route("/models/{name}/ready", methods=["GET", "HEAD"])
    async def model_ready(name: str) -> dict[str, Any]:
        model = _model(service, name, None)
        return {"name": name, "ready": True, "version": model.version}

    @router.api_route("/models/{name}/versions/{version}/ready", methods=["GET", "HEAD"])
    async def model_version_ready(name: str, version: str) -> dict[str, Any]:
        _model(service, name, version)
        return {"name": name, "ready": True, "version": version}

    async def infer(name: str, version: str | None, request: Request) -> Response:
        model = _model(service, name, version)
        body = await read_body(request, max_bytes)
        header, binary = _split(body, request.headers.get(HEADER_LENGTH))
        infer_request = parse(V2Request, header, "v2 request")
        tensor = infer_request.inputs[0]
        raw = _binary_part(tensor, binary)
        batch = _batch_size(tensor, limits.max_images)
        if tensor.datatype == "FP32":
            tensors = _fp32_inputs(tensor, raw, batch, model.input_size)
        else:
            files = _bytes_inputs(tensor, raw, batch)
            loop = asyncio.get_running_loop()
            images = await asyncio.gather(*[
                loop.run_in_executor(service.decoders, decode, data, f"{tensor.name}[{i}]")
                for i, data in enumerate(files)])
            tensors = [model.prepare(image) for image in images]
        try:
            answers = await service.infer_prepared(name, tensors)
        except RequestTooLarge as exc:
            raise HttpProblem(413, "too many images", str(exc)) from None
        except Overloaded:
            raise HttpProblem(503, "overloaded", f"the queue of {name} is full; retry",
                              {"Retry-After": str(RETRY_AFTER_S)}) from None
        except (ModelFailure, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise HttpProblem(503, "inference failed", f"{name}: {reason}",
                              {"Retry-After": str(RETRY_AFTER_S)}) from None
        outputs = _outputs(answers, model.extra_outputs)
        return _respond(infer_request, outputs, name, model.version)

    @router.post("/models/{name}/infer", openapi_extra=_INFER_BODY, response_model=V2Response,
                 responses=_INFER_ANSWERS)
    async def infer_latest(name: str, request: Request) -> Response:
        return await infer(name, None, request)

    @router.post("/models/{name}/versions/{version}/infer", openapi_extra=_INFER_BODY,
                 response_model=V2Response, responses=_INFER_ANSWERS)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await infer(name, version, request)

    return router


def _model(service: Service, name: str, version: str | None) -> Any:
    model = service.models.get(name)
    if model is None:
        known = [m.name for m in service.config.models]
        raise HttpProblem(404, "unknown model", f"no loaded model '{name}'; models: "
                          f"{', '.join(known)}")
    if version not in (None, "", model.version):
        raise HttpProblem(404, "unknown version", f"{name} serves version {model.version}, "
                          f"not {version}")
    return model


def _metadata(model: Any) -> dict[str, Any]:
    height, width = model.input_size
    outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
               {"name": "score", "datatype": "FP32", "shape": [-1]}]
    outputs += [{"name": key, "datatype": datatype, "shape": [-1]}
                for key, datatype in model.extra_outputs]
    return {"name": model.name, "versions": [model.version], "platform": f"vitkit-{model.kind}",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, height, width]},
                       {"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs, "parameters": {"labels": model.labels}}


def _split(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """(JSON part, binary part) of a request body."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        # ASCII digits only: "²".isdigit() is True, and int("²") raises (a 500 before).
        if (not re.fullmatch(r"\s*[0-9]{1,12}\s*", header_length)
                or int(header_length) > len(body)):
            raise HttpProblem(400, "bad header", f"{HEADER_LENGTH} must be the byte length of "
                              f"the JSON part (at most {len(body)}), got {header_length!r}")
        json_part, binary = body[:int(header_length)], body[int(header_length):]
    try:
        return json.loads(json_part or b"null"), binary
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpProblem(400, "bad json", f"the request header is not valid JSON: {exc}"
                          ) from None


def _binary_part(tensor: V2Tensor, binary: bytes) -> bytes | None:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if tensor.data is None:
            raise HttpProblem(422, "bad v2 request", f"input {tensor.name} has neither data "
                              "nor parameters.binary_data_size")
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size != len(binary):
        raise HttpProblem(422, "bad binary data", f"input {tensor.name} declares "
                          f"binary_data_size {size!r}; the body carries {len(binary)} bytes "
                          f"after the {HEADER_LENGTH} header part")
    return binary


def _batch_size(tensor: V2Tensor, max_images: int) -> int:
    if any(dim < 0 for dim in tensor.shape):
        raise HttpProblem(422, "bad shape", f"shape {tensor.shape} has a negative dimension")
    batch = tensor.shape[0]
    if batch == 0:
        raise HttpProblem(422, "no image", "shape[0] is 0: the request holds no image")
    if batch > max_images:
        raise HttpProblem(413, "too many images", f"shape[0] is {batch}; at most {max_images} "
                          "per request (limits.max_images)")
    return batch


def _fp32_inputs(tensor: V2Tensor, raw: bytes | None, batch: int,
                 input_size: tuple[int, int]) -> list[Any]:
    import torch

    height, width = input_size
    if tensor.shape[1:] != [3, height, width]:
        raise HttpProblem(422, "bad shape", f"input must be [B, 3, {height}, {width}], got "
                          f"{tensor.shape}")
    count = math.prod(tensor.shape)
    if count > MAX_V2_ELEMENTS:
        raise HttpProblem(413, "too large", f"{count:,} elements in one request")
    if raw is not None:
        if len(raw) != 4 * count:
            raise HttpProblem(422, "bad data", f"{tensor.shape} FP32 needs {4 * count} bytes, "
                              f"got {len(raw)}")
        array = np.frombuffer(raw, dtype="<f4")
    else:
        try:
            array = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise HttpProblem(422, "bad data", f"FP32 data must be numbers: {exc}") from None
        if array.size != count:
            raise HttpProblem(422, "bad data", f"data holds {array.size} numbers; shape "
                              f"{tensor.shape} needs {count}")
    if not np.isfinite(array).all():
        raise HttpProblem(422, "non-finite input", "FP32 data holds NaN or infinity; send "
                          "finite preprocessed values")
    batch_tensor = torch.from_numpy(array.astype(np.float32, copy=True)).reshape(tensor.shape)
    return list(batch_tensor[:batch])


def _bytes_inputs(tensor: V2Tensor, raw: bytes | None, batch: int) -> list[bytes]:
    if math.prod(tensor.shape) != batch:
        raise HttpProblem(422, "bad shape", f"BYTES input must be [B] (or [B, 1]): one image "
                          f"file per element, got {tensor.shape}")
    if raw is not None:
        files = _unpack_bytes(raw)
    else:
        files = []
        for i, item in enumerate(tensor.data or []):
            if not isinstance(item, str):
                raise HttpProblem(422, "bad data", f"{tensor.name}[{i}] must be a base64 "
                                  "string in JSON (raw bytes need the binary extension)")
            try:
                files.append(base64.b64decode(item.split(",")[-1], validate=True))
            except (binascii.Error, ValueError):
                raise HttpProblem(422, "bad base64", f"{tensor.name}[{i}] is not valid "
                                  "base64") from None
    if len(files) != batch:
        raise HttpProblem(422, "bad data", f"{len(files)} elements for shape {tensor.shape}")
    return files


def _unpack_bytes(raw: bytes) -> list[bytes]:
    files, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise HttpProblem(422, "bad binary data", "a BYTES element is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise HttpProblem(422, "bad binary data", "a BYTES element is longer than the body")
        files.append(raw[offset:offset + length])
        offset += length
    return files


def _outputs(answers: list[dict[str, Any]], extra: Sequence[tuple[str, str]]
             ) -> list[tuple[str, str, list[Any]]]:
    """``label`` and ``score``, then the task's own outputs (``unknown`` for a classifier,
    a mask or boxes as JSON text for segmentation and detection)."""
    outputs: list[tuple[str, str, list[Any]]] = [
        ("label", "BYTES", [str(a["label"]) for a in answers]),
        ("score", "FP32", [float(a["score"]) for a in answers])]
    for key, datatype in extra:
        values = [a.get(key) for a in answers]
        if datatype == "BOOL":
            outputs.append((key, datatype, [bool(v) for v in values]))
        elif datatype == "FP32":
            outputs.append((key, datatype, [float(v or 0.0) for v in values]))
        else:  # BYTES: text as is, anything else as JSON
            outputs.append((key, "BYTES", [v if isinstance(v, str) else json.dumps(v)
                                           for v in values]))
    return outputs


def _respond(infer_request: V2Request, outputs: list[tuple[str, str, list[Any]]], name: str,
             version: str) -> Response:
    wanted = {o.name: o for o in infer_request.outputs or []}
    unknown = sorted(set(wanted) - {n for n, _, _ in outputs})
    if unknown:
        raise HttpProblem(400, "unknown output", f"no output {', '.join(unknown)}; outputs: "
                          f"{', '.join(n for n, _, _ in outputs)}")
    all_binary = bool((infer_request.parameters or {}).get("binary_data_output"))
    tensors, chunks = [], []
    for output_name, datatype, values in outputs:
        if wanted and output_name not in wanted:
            continue
        requested = wanted.get(output_name)
        binary = bool((requested.parameters or {}).get("binary_data", all_binary)
                      if requested is not None else all_binary)
        entry: dict[str, Any] = {"name": output_name, "datatype": datatype,
                                 "shape": [len(values)]}
        if binary:
            chunk = _pack(datatype, values)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = values
        tensors.append(entry)
    body: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": tensors}
    if infer_request.id is not None:
        body["id"] = infer_request.id
    if not chunks:
        return JSONResponse(body)
    header = json.dumps(body).encode()
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


def _pack(datatype: str, values: list[Any]) -> bytes:
    if datatype == "FP32":
        return np.asarray(values, dtype="<f4").tobytes()
    if datatype == "BOOL":
        return np.asarray(values, dtype=np.bool_).tobytes()
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
